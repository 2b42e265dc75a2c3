"""dSprites (Matthey et al. 2017): 737,280 binary 64x64 images of one sprite on a black canvas.

The factor grid is the original's, without its constant ``color`` factor (size 1, so it changes
neither the count nor the order of the images):

    shape        3   0 square, 1 ellipse, 2 heart
    scale        6   np.linspace(0.5, 1, 6)
    orientation  40  np.linspace(0, 2 pi, 40)   (endpoint included: 0 and 39 are the same angle)
    pos_x        32  np.linspace(0, 1, 32)      left to right (columns)
    pos_y        32  np.linspace(0, 1, 32)      top to bottom (rows)

Image ``i`` has factor indices ``np.unravel_index(i, factor_sizes)``: row-major, ``pos_y`` fastest,
which is the order of the official file's ``latents_classes[:, 1:]``.

Images are rasterised on demand by ``rasterize`` -- a pure function of the factors, no cache.
Geometry, in pixels, with the canvas spanning ``[0, 64]^2`` and pixel ``(row, col)`` centred at
``(row + 0.5, col + 0.5)``; a pixel is 1 when its centre lies inside the sprite:

- square: side ``20 * scale``;
- ellipse: axes ``20 * scale`` by ``10 * scale`` (long axis horizontal at orientation 0);
- heart: the region ``(u^2 + v^2 - 1)^3 - u^2 v^3 <= 0`` (v up, tip at the bottom), scaled to
  ``20 * scale`` wide (about 20 * scale tall) and shifted so its area centroid is the sprite centre;
- the sprite is turned counter-clockwise (as seen on screen) by the orientation about its centre,
  which sits at ``MARGIN + pos * (64 - 2 * MARGIN)`` along each axis; ``MARGIN = 15`` keeps the
  largest sprite (the square's half-diagonal, 14.1 px) inside the canvas at every orientation.
"""
from __future__ import annotations

import math
import operator
import os
import zipfile

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = math.prod(FACTOR_SIZES)
IMAGE_SIZE = 64
SHAPE_NAMES = ("square", "ellipse", "heart")  # by shape index
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

# Coarse factor classes (``factor_classes``): what the factor classifier predicts.
CLASS_SIZES = (3, 6, 10, 8, 8)

MARGIN = 15.0
SQUARE_HALF_SIDE = 10.0
ELLIPSE_SEMI_AXES = (10.0, 5.0)
HEART_HALF_WIDTH = 1.1390  # max |u| of the implicit heart curve
HEART_PIXELS_PER_UNIT = 10.0 / HEART_HALF_WIDTH
HEART_CENTROID_V = 0.29349  # area centroid of the implicit heart (u = 0 by symmetry)
_IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
_PIXEL_CENTRES = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
WINDOW = 32  # the square of pixels around a sprite's centre that rasterize computes


def _check_factors(factors) -> np.ndarray:
    """``factors`` as an int64 array ``[..., 5]``; ValueError when malformed or out of range."""
    array = np.asarray(factors)
    if array.ndim == 0 or array.shape[-1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must have shape [..., {len(FACTOR_SIZES)}] "
                         f"(one column per factor {FACTOR_NAMES}), got shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"factors must hold integer factor indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    for column, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
        values = array[..., column]
        if values.size and (values.min() < 0 or values.max() >= size):
            bad = values[(values < 0) | (values >= size)].flat[0]
            raise ValueError(f"factors: {name} index must be in [0, {size}), got {bad}")
    return array


def _check_indices(indices) -> np.ndarray:
    """``indices`` as an int64 array; IndexError outside ``[0, NUM_IMAGES)``."""
    array = np.asarray(indices)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"index must hold integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= NUM_IMAGES):
        bad = array[(array < 0) | (array >= NUM_IMAGES)].flat[0]
        raise IndexError(f"index {bad} is out of range [0, {NUM_IMAGES})")
    return array


def factors_of(indices) -> np.ndarray:
    """Factor indices ``[..., 5]`` (int64) of image indices ``[...]``."""
    indices = _check_indices(indices)
    return np.stack(np.unravel_index(indices, FACTOR_SIZES), axis=-1).astype(np.int64)


def index_of(factors) -> np.ndarray:
    """Image indices ``[...]`` (int64) of factor indices ``[..., 5]``."""
    factors = _check_factors(factors)
    return np.ravel_multi_index(tuple(np.moveaxis(factors, -1, 0)), FACTOR_SIZES).astype(np.int64)


def factor_classes(factors) -> np.ndarray:
    """Coarse classes ``[..., 5]`` (int64, sizes ``CLASS_SIZES``) of factor indices ``[..., 5]``:
    shape (3), scale (6), orientation modulo a quarter turn in 10 bins (a square a quarter turn on
    is the same image, so only this much of the angle is visible in every image), pos_x and pos_y
    in 8 bins of 4 grid positions. The factor classifier predicts these, and the sample, traversal
    and code scores of ``msvae.evaluation`` compare them."""
    factors = _check_factors(factors)
    quarter = np.mod(ORIENTATIONS[factors[..., 2]] + 1e-9, np.pi / 2)
    orientation = np.minimum((quarter / (np.pi / 2) * 10).astype(np.int64), 9)
    return np.stack([factors[..., 0], factors[..., 1], orientation, factors[..., 3] // 4,
                     factors[..., 4] // 4], axis=-1).astype(np.int64)


def factor_values(factors) -> np.ndarray:
    """The original's latent values ``[..., 5]`` (float64) of factor indices ``[..., 5]``.

    Columns: shape as 1, 2, 3 (as the official ``latents_values``), scale, orientation in
    radians, pos_x and pos_y in [0, 1].
    """
    factors = _check_factors(factors)
    shape, scale, orientation, pos_x, pos_y = np.moveaxis(factors, -1, 0)
    return np.stack([shape + 1.0, SCALES[scale], ORIENTATIONS[orientation],
                     POSITIONS[pos_x], POSITIONS[pos_y]], axis=-1)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-frame points ``(u, v)`` (pixels at scale 1, v up) lie inside ``shape``."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE
    if shape == 1:
        semi_u, semi_v = ELLIPSE_SEMI_AXES
        return (u / semi_u) ** 2 + (v / semi_v) ** 2 <= 1.0
    u = u / HEART_PIXELS_PER_UNIT
    v = v / HEART_PIXELS_PER_UNIT + HEART_CENTROID_V
    return (u * u + v * v - 1.0) ** 3 - u * u * v ** 3 <= 0.0


def rasterize(factors) -> Tensor:
    """Render factor indices ``[n, 5]`` as binary float32 images ``[n, 1, 64, 64]`` (vectorised)."""
    factors = _check_factors(factors)
    if factors.ndim != 2:
        raise ValueError(f"factors must have shape [n, {len(FACTOR_SIZES)}], got {factors.shape}")
    shape, scale, orientation, pos_x, pos_y = factors.T
    span = IMAGE_SIZE - 2.0 * MARGIN
    centre_col = (MARGIN + POSITIONS[pos_x] * span)[:, None, None]
    centre_row = (MARGIN + POSITIONS[pos_y] * span)[:, None, None]
    # Only a WINDOW x WINDOW square around the centre can be inside a sprite (pixel centres outside
    # it are >= 14.5 px away; no sprite reaches farther than 10 * sqrt(2)): the same arithmetic on
    # a quarter of the pixels, so the images are those of the whole-image computation, bit for bit.
    first_col = np.clip(np.floor(centre_col[:, 0, 0]).astype(np.int64) - WINDOW // 2 + 1, 0, IMAGE_SIZE - WINDOW)
    first_row = np.clip(np.floor(centre_row[:, 0, 0]).astype(np.int64) - WINDOW // 2 + 1, 0, IMAGE_SIZE - WINDOW)
    cols = first_col[:, None] + np.arange(WINDOW)  # [n, WINDOW]
    rows = first_row[:, None] + np.arange(WINDOW)
    angle = ORIENTATIONS[orientation][:, None, None]
    size = SCALES[scale][:, None, None]
    right = _PIXEL_CENTRES[cols][:, None, :] - centre_col  # [n, 1, WINDOW]
    up = centre_row - _PIXEL_CENTRES[rows][:, :, None]  # [n, WINDOW, 1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * right + sin * up) / size  # rotate back by -angle, undo the scale
    v = (cos * up - sin * right) / size
    window = np.zeros((len(factors), WINDOW, WINDOW), dtype=np.float32)
    for shape_id in np.unique(shape):
        picked = shape == shape_id
        window[picked] = _inside(int(shape_id), u[picked], v[picked])
    images = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    images[np.arange(len(factors))[:, None, None], rows[:, :, None], cols[:, None, :]] = window
    return torch.from_numpy(images).unsqueeze(1)


def _read_npy_member(archive: zipfile.ZipFile, key: str, path: str):
    """Open ``key`` in an npz archive; return (file, shape, dtype) with the file at the data."""
    try:
        member = archive.open(f"{key}.npy")
    except KeyError:
        found = sorted(name.removesuffix(".npy") for name in archive.namelist())
        raise ValueError(f"{path} is not a dSprites npz: it has no {key!r} array "
                         f"(found {found})") from None
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(member)
        if version not in read_header:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = read_header[version](member)
    except ValueError as error:
        raise ValueError(f"{path}: array {key!r} is not a valid .npy member: {error}") from None
    if fortran_order:
        raise ValueError(f"{path}: array {key!r} is stored in Fortran order; expected C order")
    return member, shape, dtype


def read_npz(path: str | os.PathLike, chunk_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Read a dSprites-format npz as ``(packed_images [N, 64, 8] uint8, latents_classes [N, 6])``.

    Images (``imgs``, uint8 ``[N, 64, 64]`` in {0, 1}) are bit-packed along the rows while streaming,
    so memory stays at N * 512 bytes instead of N * 4096. Any N is accepted here; ``DSprites``
    checks the full grid.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dSprites file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an npz (zip) archive")
    with zipfile.ZipFile(path) as archive:
        member, shape, dtype = _read_npy_member(archive, "latents_classes", path)
        with member:
            num_columns = 1 + len(FACTOR_SIZES)
            if len(shape) != 2 or shape[1] != num_columns or not np.issubdtype(dtype, np.integer):
                raise ValueError(f"{path}: latents_classes must be an integer array [N, 6], "
                                 f"got {dtype} {shape}")
            latents = np.frombuffer(member.read(), dtype=dtype).reshape(shape).astype(np.int64)
        member, shape, dtype = _read_npy_member(archive, "imgs", path)
        with member:
            if shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(shape) != 3 or dtype != np.uint8:
                raise ValueError(f"{path}: imgs must be uint8 [N, 64, 64], got {dtype} {shape}")
            if shape[0] != len(latents):
                raise ValueError(f"{path}: imgs has {shape[0]} rows but latents_classes "
                                 f"has {len(latents)}")
            packed = np.empty((shape[0], IMAGE_SIZE, IMAGE_SIZE // 8), dtype=np.uint8)
            for start in range(0, shape[0], chunk_rows):
                rows = min(chunk_rows, shape[0] - start)
                data = member.read(rows * _IMAGE_BYTES)
                if len(data) != rows * _IMAGE_BYTES:
                    raise ValueError(f"{path}: imgs is truncated")
                chunk = np.frombuffer(data, dtype=np.uint8).reshape(rows, IMAGE_SIZE, IMAGE_SIZE)
                if chunk.max(initial=0) > 1:
                    raise ValueError(f"{path}: imgs must be binary (0/1), found {chunk.max()}")
                packed[start:start + rows] = np.packbits(chunk, axis=-1)
    return packed, latents


def check_latents_classes(latents: np.ndarray, path: str) -> None:
    """ValueError unless ``latents [737280, 6]`` is the official grid: color (always 0) then our
    factors, row-major with pos_y fastest -- i.e. row ``i`` is ``(0, *factors_of(i))``."""
    expected = factors_of(np.arange(NUM_IMAGES))
    if latents.shape != (NUM_IMAGES, 1 + len(FACTOR_SIZES)) or np.any(latents[:, 0] != 0) \
            or not np.array_equal(latents[:, 1:], expected):
        raise ValueError(f"{path}: latents_classes is not the dSprites grid in row-major order "
                         f"(color, {', '.join(FACTOR_NAMES)})")


class DSprites(Dataset):
    """The dSprites images: ``ds[i]`` is a float32 tensor ``[1, 64, 64]`` in {0, 1}.

    ``DSprites()`` renders every image on demand (see the module docstring for the geometry);
    ``DSprites(path)`` serves the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
    instead (about 380 MB in memory, bit-packed), after checking its shape and factor order.
    Negative indices count from the end as for a sequence. Factor helpers work on numpy arrays.
    """

    factor_names = FACTOR_NAMES
    channels = 1
    factor_sizes = FACTOR_SIZES

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self._packed_images = None
        if path is not None:
            packed, latents = read_npz(path)
            if len(packed) != NUM_IMAGES:
                raise ValueError(f"{self.path} has {len(packed)} images; dSprites has {NUM_IMAGES}")
            check_latents_classes(latents, self.path)
            self._packed_images = packed

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> Tensor:
        index = operator.index(index)
        if not -NUM_IMAGES <= index < NUM_IMAGES:
            raise IndexError(f"index {index} is out of range for {NUM_IMAGES} images")
        return self.images(np.array([index % NUM_IMAGES]))[0]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        """Batched fetch used by ``DataLoader``: renders the whole batch in one call."""
        return list(self.images(np.asarray(indices, dtype=np.int64)))

    def images(self, indices) -> Tensor:
        """Images ``[n, 1, 64, 64]`` (float32) of image indices ``[n]``."""
        indices = _check_indices(indices)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
        return self.render(factors_of(indices))

    def render(self, factors) -> Tensor:
        """Images ``[n, 1, 64, 64]`` (float32) of factor indices ``[n, 5]``: from the file when one
        was given, else ``rasterize(factors)``."""
        if self._packed_images is None:
            return rasterize(factors)
        bits = np.unpackbits(self._packed_images[index_of(factors)], axis=-1)
        return torch.from_numpy(bits.astype(np.float32)).unsqueeze(1)

    factors = staticmethod(factors_of)
    index = staticmethod(index_of)
    factor_values = staticmethod(factor_values)
    factor_classes = staticmethod(factor_classes)
    class_sizes = CLASS_SIZES

    @staticmethod
    def sample_factors(n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` factor-index rows ``[n, 5]`` (int64) drawn uniformly from the grid."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        rng = np.random.default_rng(rng)
        return np.stack([rng.integers(0, size, int(n)) for size in FACTOR_SIZES], axis=-1)

    @staticmethod
    def split(held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A reproducible random split of the image indices into sorted ``(train, held_out)``
        int64 arrays with ``round(held_out_fraction * 737280)`` held out."""
        if not 0.0 <= held_out_fraction <= 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
        permutation = np.random.default_rng(seed).permutation(NUM_IMAGES)
        num_held_out = round(held_out_fraction * NUM_IMAGES)
        return np.sort(permutation[num_held_out:]), np.sort(permutation[:num_held_out])
