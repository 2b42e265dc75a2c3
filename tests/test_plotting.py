"""msvae.plotting: grids and the dependency-free PNG writer."""
import struct
import zlib

import pytest
import torch

from msvae.plotting import image_grid, save_grid, save_png


def read_png(path):
    """Minimal decoder for the 8-bit, filter-0 PNGs save_png writes: -> uint8 [H, W, C]."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, color = header[:4]
    c = 1 if color == 0 else 3
    raw = zlib.decompress(idat)
    rows = [raw[r * (w * c + 1) + 1:(r + 1) * (w * c + 1)] for r in range(h)]
    return torch.tensor([list(row) for row in rows], dtype=torch.uint8).view(h, w, c)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path, channels):
    image = torch.rand(channels, 7, 5)
    save_png(image, tmp_path / "a.png")
    back = read_png(tmp_path / "a.png").permute(2, 0, 1)
    torch.testing.assert_close(back, (image * 255).round().to(torch.uint8))


def test_grid_layout(tmp_path):
    images = torch.stack([torch.full((1, 4, 4), k / 5) for k in range(5)])
    grid = image_grid(images, nrow=3, padding=1)
    assert grid.shape == (1, 2 * 5 + 1, 3 * 5 + 1)
    assert float(grid[0, 1, 1]) == 0.0 and float(grid[0, 6, 6]) == pytest.approx(0.8)
    assert float(grid[0, 6, 11]) == 1.0  # the empty sixth cell keeps the padding value
    save_grid(images, tmp_path / "g.png", nrow=3)
    assert read_png(tmp_path / "g.png").shape[:2] == (2 * 6 + 2, 3 * 6 + 2)


def test_bad_shapes():
    with pytest.raises(ValueError, match="images must be"):
        image_grid(torch.rand(3, 4, 4), 2)
    with pytest.raises(ValueError, match="image must be"):
        save_png(torch.rand(2, 4, 4), "x.png")
