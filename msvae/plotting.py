"""Image figures written as PNG with the standard library alone (no plotting dependency)."""
from __future__ import annotations

import os
import struct
import zlib

import torch
from torch import Tensor


def image_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tiles ``images [N, C, H, W]`` (values in [0, 1]) into one ``[C, H', W']`` image, ``nrow`` per row."""
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = torch.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value,
                      dtype=images.dtype)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def save_png(image: Tensor, path: str | os.PathLike) -> None:
    """Writes ``image [C, H, W]`` (C = 1 or 3, values in [0, 1]) as an 8-bit PNG."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [1 or 3, H, W], got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    h, w, c = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].contiguous().numpy().tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                + chunk(b"IEND", b""))


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int, padding: int = 2) -> None:
    """``images [N, C, H, W]`` in [0, 1] as one PNG grid with ``nrow`` images per row."""
    save_png(image_grid(images.detach().cpu(), nrow, padding), path)
