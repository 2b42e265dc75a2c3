"""Image datasets beside dSprites, with its interface (``images(indices) -> [n, C, 64, 64]`` in
[0, 1], ``split``, and factor helpers where the data has factors):

- ``ImageFiles(path)``: a user's images, a folder of image files (any size and mode: centre-cropped
  to a square and resized to 64x64) or one ``.npy`` / ``.npz`` array, read lazily;
- ``DigitImages()``: scikit-learn's 8x8 digits, upscaled to 64x64, with the digit as their one factor.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from msvae.data import digits

SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def random_split(n: int, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, held_out)`` indices of ``n`` rows, ``round(fraction * n)`` held out at random."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    permutation = np.random.default_rng(seed).permutation(n)
    num_held_out = round(held_out_fraction * n)
    return np.sort(permutation[num_held_out:]), np.sort(permutation[:num_held_out])


class _Images(Dataset):
    """``ds[i]``: a float32 image ``[C, 64, 64]``; subclasses define ``__len__`` and ``images``."""

    factor_names: tuple[str, ...] | None = None  # None: the data has no known factors
    class_sizes: tuple[int, ...] | None = None
    channels = 1

    def __getitem__(self, index: int) -> Tensor:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} images")
        return self.images(np.array([index % n]))[0]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        return list(self.images(np.asarray(indices, dtype=np.int64)))

    def split(self, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A reproducible random split into sorted ``(train, held_out)`` index arrays."""
        return random_split(len(self), held_out_fraction, seed)

    def _indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"indices must be in [0, {len(self)})")
        return indices


def _to_unit(array: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or any integer image -> float32 in [0, 1]; a float image must already be in [0, 1]."""
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        top = 1 if array.dtype == bool else 255 if array.dtype == np.uint8 else max(int(array.max()), 1)
        return array.astype(np.float32) / top
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError("float images must be finite and in [0, 1] (integer images are scaled by their type)")
    return array


def _square_resize(images: Tensor) -> Tensor:
    """``[n, C, H, W]`` -> centre-cropped to a square and resized (area / bilinear) to 64x64."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top:top + side, left:left + side]
    if side == SIZE:
        return images
    mode = "area" if side > SIZE else "bilinear"
    return F.interpolate(images, size=(SIZE, SIZE), mode=mode,
                         **({} if mode == "area" else {"align_corners": False})).clamp(0, 1)


def _memmap_stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of an uncompressed ``.npy`` member of a zip (``np.savez``), memory-mapped."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26..29
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"{path}: unsupported .npy format version {version}")
        shape, fortran_order, dtype = read_header[version](f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: object arrays are not images")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran_order else "C")


class ImageFiles(_Images):
    """A user's images as 64x64 tensors in [0, 1], without factors.

    ``path``: a folder (searched recursively) of image files (``IMAGE_SUFFIXES``, decoded by
    Pillow), or a ``.npy`` / ``.npz`` file (the first array of an ``.npz``, or its ``key``) of shape
    ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` (C = 1 or 3): uint8 0..255, other integers
    scaled by their maximum, floats in [0, 1]. A ``.npy`` and an uncompressed ``.npz`` member
    (``np.savez``) are memory-mapped, so a large array is never loaded whole (a compressed
    member, ``np.savez_compressed``, is decompressed into memory once). ``channels`` 1
    or 3 (default: 3 if the first image is colour, else 1); images of the other mode are converted.
    """

    def __init__(self, path: str | os.PathLike, channels: int | None = None, key: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"{self.path} does not exist")
        self._files: list[Path] | None = None
        self._array = None
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise ValueError(f"{self.path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            first = self._decode(self._files[0], None)
        elif self.path.suffix in (".npy", ".npz"):
            self._array = self._open_array(key)
            first = self._array[0]
        else:
            raise ValueError(f"{self.path} is neither a folder of images nor a .npy / .npz array")
        if channels is None:
            channels = 3 if self._channel_count(np.asarray(first)) == 3 else 1
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = channels

    def _open_array(self, key: str | None):
        unreadable = (OSError, ValueError, zipfile.BadZipFile, EOFError)
        if self.path.suffix == ".npy":
            try:
                array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except unreadable as error:
                raise ValueError(f"{self.path} is not a readable .npy file ({error})") from None
        else:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                    infos = {n: archive.getinfo(f"{n}.npy") for n in names}
            except unreadable as error:
                raise ValueError(f"{self.path} is not a readable .npz file ({error})") from None
            member = key or (names[0] if names else None)
            if member not in names:
                raise ValueError(f"{self.path} has no array {member!r} (it has {names})")
            try:
                array = (_memmap_stored_member(self.path, infos[member])
                         if infos[member].compress_type == zipfile.ZIP_STORED
                         else np.load(self.path, allow_pickle=False)[member])
            except unreadable as error:
                raise ValueError(f"{self.path}: array {member!r} is not readable ({error})") from None
        if array.ndim not in (3, 4) or len(array) == 0:
            raise ValueError(f"{self.path}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W], "
                             f"got shape {array.shape}")
        if array.ndim == 4 and array.shape[-1] not in (1, 3) and array.shape[1] not in (1, 3):
            raise ValueError(f"{self.path}: 4-D images need 1 or 3 channels first or last, got {array.shape}")
        return array

    @staticmethod
    def _channel_count(image: np.ndarray) -> int:
        if image.ndim == 2:
            return 1
        return image.shape[-1] if image.shape[-1] in (1, 3) else image.shape[0]

    def _decode(self, file: Path, channels: int | None) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if image.mode in ("1", "L", "LA", "I", "I;16", "F")
                                                        else "RGB")
                return np.asarray(image.convert(mode))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"{file} is not a readable image ({error})") from None

    def __len__(self) -> int:
        return len(self._files) if self._files is not None else len(self._array)

    def _as_chw(self, image: np.ndarray) -> np.ndarray:
        """One float image ``[H, W]`` / ``[H, W, C]`` / ``[C, H, W]`` -> ``[self.channels, H, W]``."""
        if image.ndim == 2:
            image = image[None]
        elif image.shape[-1] in (1, 3) and image.shape[0] not in (1, 3):
            image = np.moveaxis(image, -1, 0)
        if image.shape[0] == self.channels:
            return image
        if self.channels == 1:  # colour -> grey (ITU-R 601 luma)
            return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        return np.repeat(image, 3, axis=0)

    def images(self, indices) -> Tensor:
        """Images ``[n, C, 64, 64]`` (float32 in [0, 1])."""
        indices = self._indices(indices)
        raw = ((self._decode(self._files[i], self.channels) for i in indices) if self._files is not None
               else (np.asarray(self._array[i]) for i in indices))
        rows = [_square_resize(torch.from_numpy(self._as_chw(_to_unit(image)))[None]) for image in raw]
        if not rows:
            return torch.zeros(0, self.channels, SIZE, SIZE)
        return torch.cat(rows).contiguous()


class DigitImages(_Images):
    """scikit-learn's 1,797 handwritten digits (8x8 grey, bundled) upscaled bilinearly to 64x64,
    with one factor, the digit (10 classes): for the 64x64 pipeline of ``msvae fit``. (The 8x8
    vectors themselves, for MLPs, are ``msvae.data.digits.load_digits``.)"""

    factor_names = ("digit",)
    class_sizes = (10,)

    def __init__(self):
        pixels, self.labels = digits.load_digits()
        self._images = _square_resize(pixels.view(-1, 1, 8, 8))

    def __len__(self) -> int:
        return len(self._images)

    def images(self, indices) -> Tensor:
        return self._images[torch.from_numpy(self._indices(indices))]

    def factors(self, indices) -> np.ndarray:
        """Factor classes ``[n, 1]`` (the digit) of image indices ``[n]``."""
        return self.labels[self._indices(indices)][:, None]

    @staticmethod
    def factor_classes(factors) -> np.ndarray:
        return np.asarray(factors)

    def split(self, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Stratified by digit (``digits.split``)."""
        return digits.split(self.labels, held_out_fraction, seed)
