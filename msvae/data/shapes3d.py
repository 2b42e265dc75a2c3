"""3D Shapes (Burgess & Kim 2018): 480,000 RGB 64x64 images of one object in a room.

The factor grid in the official file's order (``3dshapes.h5``: ``images [480000, 64, 64, 3]``
uint8, ``labels [480000, 6]`` the factor values), row-major, ``orientation`` fastest:

    floor_hue    10  np.linspace(0, 0.9, 10)   (hue of the HSV colour wheel)
    wall_hue     10  np.linspace(0, 0.9, 10)
    object_hue   10  np.linspace(0, 0.9, 10)
    scale         8  np.linspace(0.75, 1.25, 8)
    shape         4  0 cube, 1 cylinder, 2 sphere, 3 capsule
    orientation  15  np.linspace(-30, 30, 15)  (degrees)

``Shapes3D()`` renders them procedurally (nothing is downloaded): a small deterministic
ray-caster. The scene: a floor (the plane y = 0), a back wall (z = 4, facing the camera) and the
object standing on the floor at the origin, ``scale`` times its base size; the camera (field of
view 40°) looks at (0, 0.75, 0) from distance 4.6 and height 1.9, turned about the vertical axis by
``orientation``, so the object and the room are seen from that angle. Each surface has one hue
(saturation 0.75), lit by a directional light (Lambert, ambient 0.35), no shadows. Geometry
depends on (scale, shape, orientation) alone: the 480 silhouettes and shadings are cast once on
first use (about 2 ms each) and cached, and the hues colour them, so any image is a few array
look-ups. ``Shapes3D(path)`` serves the official file instead (h5py: ``pip install h5py``).
"""
from __future__ import annotations

import colorsys
import math
import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from msvae.data.images import random_split

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
NUM_IMAGES = math.prod(FACTOR_SIZES)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
HUES = np.linspace(0.0, 0.9, 10)
SCALES = np.linspace(0.75, 1.25, 8)
ORIENTATIONS = np.linspace(-30.0, 30.0, 15)
SIZE = 64
FLOOR, WALL, OBJECT = 0, 1, 2  # surface ids of a pixel
WALL_Z = 4.0
SATURATION, AMBIENT = 0.75, 0.35
LIGHT = np.array([-0.4, 0.8, -0.45]) / np.linalg.norm([-0.4, 0.8, -0.45])
_CAMERA_DISTANCE, _CAMERA_HEIGHT, _TARGET = 4.6, 1.9, np.array([0.0, 0.75, 0.0])
_FOV = math.radians(40.0)


def _object_distance(p: np.ndarray, shape: int, scale: float) -> np.ndarray:
    """Signed distance ``[n]`` from points ``p [n, 3]`` to the object (standing on y = 0)."""
    if shape == 0:  # cube, half side 0.5 s
        h = 0.5 * scale
        q = np.abs(p - [0.0, h, 0.0]) - h
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(1), 0.0)
    if shape == 1:  # vertical cylinder, radius 0.5 s, height s
        r = h = 0.5 * scale
        d = np.stack([np.hypot(p[:, 0], p[:, 2]) - r, np.abs(p[:, 1] - h) - h], 1)
        return np.linalg.norm(np.maximum(d, 0.0), axis=1) + np.minimum(d.max(1), 0.0)
    if shape == 2:  # sphere, radius 0.55 s
        r = 0.55 * scale
        return np.linalg.norm(p - [0.0, r, 0.0], axis=1) - r
    # capsule lying along x: radius 0.38 s, segment half-length 0.42 s
    r, half = 0.38 * scale, 0.42 * scale
    q = p - [0.0, r, 0.0]
    q[:, 0] = np.maximum(np.abs(q[:, 0]) - half, 0.0)
    return np.linalg.norm(q, axis=1) - r


def _rays(orientation_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera origin ``[3]`` and unit ray directions ``[64 * 64, 3]`` (row-major, top row first)."""
    angle = math.radians(orientation_degrees)
    origin = np.array([_CAMERA_DISTANCE * math.sin(angle), _CAMERA_HEIGHT, -_CAMERA_DISTANCE * math.cos(angle)])
    forward = (_TARGET - origin) / np.linalg.norm(_TARGET - origin)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    half = math.tan(_FOV / 2)
    ticks = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    u, v = np.meshgrid(ticks * half, -ticks * half)  # v: up is positive, top row first
    directions = forward + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up
    return origin, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def cast(scale_index: int, shape: int, orientation_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The geometry of one (scale, shape, orientation): per pixel its surface id
    (``FLOOR`` / ``WALL`` / ``OBJECT``) ``[64, 64]`` uint8 and its shading in [0, 1] ``[64, 64]``."""
    origin, d = _rays(float(ORIENTATIONS[orientation_index]))
    scale = float(SCALES[scale_index])
    n = len(d)
    # the room, analytically: the floor where the ray descends to y = 0 before reaching the wall
    t_floor = np.where(d[:, 1] < 0, -origin[1] / np.minimum(d[:, 1], -1e-12), np.inf)
    t_wall = np.where(d[:, 2] > 0, (WALL_Z - origin[2]) / np.maximum(d[:, 2], 1e-12), np.inf)
    t_room = np.minimum(t_floor, t_wall)
    surface = np.where(t_floor <= t_wall, FLOOR, WALL).astype(np.uint8)
    normal = np.where((surface == FLOOR)[:, None], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0])
    # the object, by sphere tracing its signed distance (rays that pass near it only)
    t = np.full(n, _CAMERA_DISTANCE - 2.0)
    hit = np.zeros(n, dtype=bool)
    active = np.ones(n, dtype=bool)
    for _ in range(64):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        dist = _object_distance(origin + t[idx, None] * d[idx], shape, scale)
        t[idx] += dist
        hit[idx[dist < 1e-4]] = True
        active[idx[(dist < 1e-4) | (t[idx] > t_room[idx]) | (t[idx] > 20.0)]] = False
    hit &= t < t_room
    if hit.any():
        p = origin + t[hit, None] * d[hit]
        eps = 1e-4
        grad = np.stack([_object_distance(p + e, shape, scale) - _object_distance(p - e, shape, scale)
                         for e in np.eye(3) * eps], 1)
        normal[hit] = grad / np.linalg.norm(grad, axis=1, keepdims=True)
        surface[hit] = OBJECT
    shade = AMBIENT + (1 - AMBIENT) * np.clip(normal @ LIGHT, 0.0, 1.0)
    return surface.reshape(SIZE, SIZE), shade.reshape(SIZE, SIZE).astype(np.float32)


def _hue_colours() -> np.ndarray:
    """RGB ``[10, 3]`` of the ten hues at full value."""
    return np.array([colorsys.hsv_to_rgb(h, SATURATION, 1.0) for h in HUES], dtype=np.float32)


def factors_of(indices) -> np.ndarray:
    """Factor indices ``[n, 6]`` (int64) of image indices ``[n]``."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= NUM_IMAGES)):
        raise ValueError(f"indices must be a 1-D array of ints in [0, {NUM_IMAGES})")
    return np.stack(np.unravel_index(indices, FACTOR_SIZES), axis=-1).astype(np.int64)


def index_of(factors) -> np.ndarray:
    """Image indices ``[n]`` of factor indices ``[n, 6]``."""
    factors = np.asarray(factors, dtype=np.int64)
    if factors.ndim != 2 or factors.shape[1] != 6 or (factors < 0).any() or (factors >= FACTOR_SIZES).any():
        raise ValueError(f"factors must be [n, 6] indices within {FACTOR_SIZES}")
    return np.ravel_multi_index(tuple(factors.T), FACTOR_SIZES)


def factor_values(factors) -> np.ndarray:
    """The values ``[n, 6]`` (as the official ``labels``) of factor indices ``[n, 6]``."""
    factors = np.asarray(factors, dtype=np.int64)
    index_of(factors)  # validates
    tables = (HUES, HUES, HUES, SCALES, np.arange(4.0), ORIENTATIONS)
    return np.stack([table[factors[:, k]] for k, table in enumerate(tables)], axis=-1)


class Shapes3D(Dataset):
    """The 3D Shapes images: ``ds[i]`` is a float32 tensor ``[3, 64, 64]`` in [0, 1]; the
    interface of ``DSprites`` (``images``, ``factors``, ``split``, factor classes = indices)."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    class_sizes = FACTOR_SIZES
    channels = 3

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self._geometry: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._colours = _hue_colours()
        self._file = None
        if path is not None:
            try:
                import h5py
            except ImportError:
                raise ValueError("reading 3dshapes.h5 needs h5py (pip install h5py)") from None
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise ValueError(f"{self.path} is not a readable HDF5 file ({error})") from None
            images, labels = self._file.get("images"), self._file.get("labels")
            if images is None or labels is None or images.shape != (NUM_IMAGES, SIZE, SIZE, 3) or \
                    labels.shape != (NUM_IMAGES, 6):
                raise ValueError(f"{self.path} is not 3dshapes.h5: expected images [480000, 64, 64, 3] "
                                 f"and labels [480000, 6]")
            check = np.array([0, 1, 15, 60, 480, 4800, 48000, NUM_IMAGES - 1])
            if not np.allclose(labels[check], factor_values(factors_of(check)), atol=1e-4):
                raise ValueError(f"{self.path}: its labels are not in the 3D Shapes grid order")

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> Tensor:
        if not -NUM_IMAGES <= index < NUM_IMAGES:
            raise IndexError(f"index {index} is out of range for {NUM_IMAGES} images")
        return self.images(np.array([index % NUM_IMAGES]))[0]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        return list(self.images(np.asarray(indices, dtype=np.int64)))

    def geometry(self, scale: int, shape: int, orientation: int) -> tuple[np.ndarray, np.ndarray]:
        """``cast``'s surface ids and shading of one geometry, cached."""
        key = (int(scale), int(shape), int(orientation))
        if key not in self._geometry:
            self._geometry[key] = cast(*key)
        return self._geometry[key]

    def images(self, indices) -> Tensor:
        """Images ``[n, 3, 64, 64]`` (float32 in [0, 1]) of image indices ``[n]``."""
        return self.render(factors_of(indices))

    def render(self, factors) -> Tensor:
        """Images ``[n, 3, 64, 64]`` of factor indices ``[n, 6]``: from the file when one was given."""
        factors = np.asarray(factors, dtype=np.int64)
        if self._file is not None:
            indices = index_of(factors)
            unique, inverse = np.unique(indices, return_inverse=True)  # h5py reads increasing indices
            images = self._file["images"][unique][inverse]
            return torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
        index_of(factors)  # validates
        out = np.empty((len(factors), SIZE, SIZE, 3), dtype=np.float32)
        for row, (floor, wall, obj, scale, shape, orientation) in enumerate(factors):
            surface, shade = self.geometry(scale, shape, orientation)
            palette = self._colours[[floor, wall, obj]]  # [3 surfaces, RGB]
            out[row] = palette[surface] * shade[..., None]
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    factors = staticmethod(factors_of)
    index = staticmethod(index_of)
    factor_values = staticmethod(factor_values)

    @staticmethod
    def factor_classes(factors) -> np.ndarray:
        """Factor classes for the factor classifier: the factor indices themselves."""
        return np.asarray(factors, dtype=np.int64)

    @staticmethod
    def split(held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A reproducible random split into sorted ``(train, held_out)`` index arrays."""
        return random_split(NUM_IMAGES, held_out_fraction, seed)
