"""Procedural dSprites: factor grid, index order, geometry of the rendered sprites, npz loading."""
import math
import zipfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from msvae.data import DSprites, factor_values, factors_of, index_of, rasterize, read_npz
from msvae.data import dsprites as dsprites_module
from msvae.data.dsprites import MARGIN, NUM_IMAGES, check_latents_classes

N = 737_280
SIZES = (3, 6, 40, 32, 32)


@pytest.fixture(scope="module")
def ds():
    return DSprites()


def grid_rows(shape, scale, orientation, pos_x, pos_y):
    """Factor rows [n, 5] broadcasting the given per-factor values."""
    columns = np.broadcast_arrays(shape, scale, orientation, pos_x, pos_y)
    return np.stack([np.asarray(c, dtype=np.int64).ravel() for c in columns], axis=-1)


def official_index(factors):
    """Index from the official README's formula, with the constant color column prepended."""
    latents = np.concatenate([np.zeros((len(factors), 1), np.int64), factors], axis=1)
    sizes = np.array((1,) + SIZES)
    bases = np.concatenate((sizes[::-1].cumprod()[::-1][1:], np.array([1])))
    return latents @ bases


def centre_of_mass(images):
    """(row, col) centre of mass [n, 2] of images [n, 1, 64, 64], float64."""
    images = images[:, 0].double()
    coords = torch.arange(64, dtype=torch.float64)
    mass = images.sum((1, 2))
    return torch.stack([(images.sum(2) * coords).sum(1) / mass, (images.sum(1) * coords).sum(1) / mass], 1)


def test_grid_constants(ds):
    assert len(ds) == N == NUM_IMAGES == math.prod(ds.factor_sizes)
    assert ds.factor_sizes == SIZES
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")


def test_index_factor_round_trip():
    rng = np.random.default_rng()
    indices = rng.integers(0, N, 1000)
    factors = factors_of(indices)
    assert factors.shape == (1000, 5) and factors.dtype == np.int64
    assert np.all((factors >= 0) & (factors < np.array(SIZES)))
    np.testing.assert_array_equal(index_of(factors), indices)
    np.testing.assert_array_equal(official_index(factors), indices)

    corners = np.array(np.meshgrid(*[[0, s - 1] for s in SIZES], indexing="ij")).reshape(5, -1).T
    corner_indices = index_of(corners)
    np.testing.assert_array_equal(factors_of(corner_indices), corners)
    np.testing.assert_array_equal(official_index(corners), corner_indices)
    assert index_of([0, 0, 0, 0, 0]) == 0 and index_of([s - 1 for s in SIZES]) == N - 1
    # batch shapes are preserved both ways
    assert factors_of(indices.reshape(10, 4, 25)).shape == (10, 4, 25, 5)
    assert index_of(factors.reshape(10, 100, 5)).shape == (10, 100)


def test_pos_y_varies_fastest():
    np.testing.assert_array_equal(factors_of(1) - factors_of(0), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(factors_of(32), [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(factors_of(32 * 32), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(factors_of(40 * 32 * 32), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(factors_of(6 * 40 * 32 * 32), [1, 0, 0, 0, 0])


def test_latents_classes_check_accepts_only_the_official_order():
    factors = factors_of(np.arange(N))
    latents = np.concatenate([np.zeros((N, 1), np.int64), factors], axis=1)
    check_latents_classes(latents, "fake.npz")
    swapped = latents.copy()
    swapped[[5, 6]] = swapped[[6, 5]]
    with pytest.raises(ValueError, match="row-major"):
        check_latents_classes(swapped, "fake.npz")
    colored = latents.copy()
    colored[:, 0] = 1
    with pytest.raises(ValueError, match="row-major"):
        check_latents_classes(colored, "fake.npz")


def test_factor_values_are_the_original_latent_values():
    factors = DSprites.sample_factors(500, np.random.default_rng())
    values = factor_values(factors)
    assert values.shape == (500, 5) and values.dtype == np.float64
    np.testing.assert_array_equal(values[:, 0], factors[:, 0] + 1)
    np.testing.assert_allclose(values[:, 1], 0.5 + 0.1 * factors[:, 1], rtol=1e-12)
    np.testing.assert_allclose(values[:, 2], 2 * np.pi * factors[:, 2] / 39, rtol=1e-12)
    np.testing.assert_allclose(values[:, 3:], factors[:, 3:] / 31, rtol=1e-12)
    np.testing.assert_allclose(factor_values([0, 5, 39, 31, 31]), [1, 1, 2 * np.pi, 1, 1], rtol=1e-12)


def test_images_are_binary_float32(ds):
    for index in np.random.default_rng().integers(0, N, 8):
        image = ds[int(index)]
        assert image.shape == (1, 64, 64) and image.dtype == torch.float32
        assert torch.all((image == 0) | (image == 1))
        assert image.sum() > 0
        torch.testing.assert_close(image, rasterize(factors_of([index]))[0], rtol=0, atol=0)
    torch.testing.assert_close(ds[-1], ds[N - 1], rtol=0, atol=0)


def test_rendering_is_deterministic(ds):
    factors = DSprites.sample_factors(33, np.random.default_rng())
    first = ds.render(factors)
    assert first.shape == (33, 1, 64, 64)
    torch.testing.assert_close(first, DSprites().render(factors), rtol=0, atol=0)
    torch.testing.assert_close(first[7], rasterize(factors[7:8])[0], rtol=0, atol=0)  # batch-independent


def whole_image_rasterize(factors):
    """The reference: every one of the 64 x 64 pixels tested against its sprite."""
    from msvae.data.dsprites import _PIXEL_CENTRES, MARGIN, ORIENTATIONS, POSITIONS, SCALES, _inside

    shape, scale, orientation, pos_x, pos_y = np.asarray(factors).T
    centre_col = (MARGIN + POSITIONS[pos_x] * (64 - 2 * MARGIN))[:, None, None]
    centre_row = (MARGIN + POSITIONS[pos_y] * (64 - 2 * MARGIN))[:, None, None]
    angle, size = ORIENTATIONS[orientation][:, None, None], SCALES[scale][:, None, None]
    right, up = _PIXEL_CENTRES[None, None, :] - centre_col, centre_row - _PIXEL_CENTRES[None, :, None]
    u = (np.cos(angle) * right + np.sin(angle) * up) / size
    v = (np.cos(angle) * up - np.sin(angle) * right) / size
    return torch.from_numpy(np.stack([_inside(int(s), u[i], v[i]) for i, s in enumerate(shape)])
                            .astype(np.float32)).unsqueeze(1)


def test_windowed_rendering_equals_testing_every_pixel():
    """``rasterize`` tests only a window around each sprite: every shape and orientation at the
    largest scale in the four corners and the middle, and random images, render bit for bit as
    when every pixel is tested."""
    corners = [(0, 0), (0, 31), (31, 0), (31, 31), (15, 16)]
    factors = np.array([(shape, 5, orientation, x, y) for shape in range(3) for orientation in range(40)
                        for x, y in corners])
    factors = np.concatenate([factors, DSprites.sample_factors(500, np.random.default_rng())])
    torch.testing.assert_close(rasterize(factors), whole_image_rasterize(factors), rtol=0, atol=0)


def heart_area_units(resolution=1501):
    """Area of (u^2 + v^2 - 1)^3 - u^2 v^3 <= 0 by midpoint integration on [-1.5, 1.5]^2 (float64)."""
    step = 3.0 / resolution
    g = -1.5 + step * (np.arange(resolution) + 0.5)
    u, v = np.meshgrid(g, g)
    return np.count_nonzero((u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0) * step * step


def test_areas_match_the_shapes_and_grow_as_scale_squared():
    rng = np.random.default_rng()
    heart_pixels_per_unit = 10.0 / 1.139  # the heart is 20 px wide at scale 1
    unit_areas = {0: 20.0 ** 2, 1: math.pi * 10.0 * 5.0,
                  2: heart_area_units() * heart_pixels_per_unit ** 2}
    mean_area = np.zeros((3, 6))
    for shape in range(3):
        for scale in range(6):
            positions = rng.integers(0, 32, (2, 40))
            factors = grid_rows(shape, scale, np.arange(40), positions[0], positions[1])
            mean_area[shape, scale] = rasterize(factors).sum((1, 2, 3)).double().mean().item()
            expected = unit_areas[shape] * (0.5 + 0.1 * scale) ** 2
            assert mean_area[shape, scale] == pytest.approx(expected, rel=0.03), (shape, scale)
    assert np.all(mean_area[0] > mean_area[2]) and np.all(mean_area[2] > mean_area[1])
    assert np.all(np.diff(mean_area, axis=1) > 0)


def test_ellipse_is_elongated_two_to_one():
    image = rasterize(grid_rows(1, 5, 0, 16, 16))[0, 0]
    rows, cols = torch.nonzero(image, as_tuple=True)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert 19 <= width <= 21 and 9 <= height <= 11
    turned = rasterize(grid_rows(1, 5, 10, 16, 16))[0, 0]  # 10/39 of a turn: about 92 degrees
    rows, cols = torch.nonzero(turned, as_tuple=True)
    assert rows.max() - rows.min() > 2 * (cols.max() - cols.min()) - 3


def test_centre_of_mass_follows_position():
    rng = np.random.default_rng()
    positions = np.arange(32)
    for shape in range(3):
        scale, orientation, other = rng.integers(0, 6), rng.integers(0, 40), rng.integers(0, 32)
        along_x = centre_of_mass(rasterize(grid_rows(shape, scale, orientation, positions, other)))
        along_y = centre_of_mass(rasterize(grid_rows(shape, scale, orientation, other, positions)))
        assert torch.all(torch.diff(along_x[:, 1]) > 0) and torch.all(torch.diff(along_y[:, 0]) > 0)
        # the sprite centre is MARGIN + pos * (64 - 2 MARGIN) in continuous coords; pixel k covers [k, k+1]
        centre = torch.tensor(MARGIN + positions / 31 * (64 - 2 * MARGIN) - 0.5, dtype=torch.float64)
        torch.testing.assert_close(along_x[:, 1], centre, rtol=0, atol=0.6)
        torch.testing.assert_close(along_y[:, 0], centre, rtol=0, atol=0.6)
        torch.testing.assert_close(along_x[:, 0], centre[other].expand(32), rtol=0, atol=0.6)
        torch.testing.assert_close(along_y[:, 1], centre[other].expand(32), rtol=0, atol=0.6)


def test_largest_sprites_fit_at_every_orientation_and_corner():
    corners = np.array([[0, 0], [0, 31], [31, 0], [31, 31]])
    for shape in range(3):
        factors = grid_rows(shape, 5, np.arange(40)[:, None], corners[:, 0], corners[:, 1])
        images = rasterize(factors)[:, 0]
        border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
        assert border.sum() == 0, shape


def test_rotation_changes_the_square_and_a_full_turn_returns():
    rng = np.random.default_rng()
    pos_x, pos_y = rng.integers(0, 32, 2)
    for scale in range(6):
        images = rasterize(grid_rows(0, scale, np.arange(40), pos_x, pos_y))[:, 0]
        assert (images[5] != images[0]).sum() > 10  # ~46 degrees
        assert (images[39] != images[0]).sum() <= 2
    for shape, turns in ((1, (5, 10)), (2, (5, 10, 20))):  # the ellipse is symmetric under a half turn
        images = rasterize(grid_rows(shape, 5, np.arange(40), pos_x, pos_y))[:, 0]
        assert (images[39] != images[0]).sum() <= 2
        assert all((images[k] != images[0]).sum() > 10 for k in turns)


def test_heart_points_down_at_orientation_zero():
    image = rasterize(grid_rows(2, 5, 0, 16, 16))[0, 0]
    width_per_row = image.sum(1)
    rows = torch.nonzero(width_per_row).ravel()
    top, bottom = rows.min().item(), rows.max().item()
    assert width_per_row[bottom] <= 3 and width_per_row[top + 2] >= 8
    assert image[top, 32 - 1:32 + 1].sum() == 0  # the notch between the lobes


def test_bad_indices_and_factors_raise(ds):
    for index in (N, N + 5, -N - 1):
        with pytest.raises(IndexError, match="out of range"):
            ds[index]
    for index in (N, -1, [0, N]):
        with pytest.raises(IndexError, match="out of range"):
            factors_of(index)
    with pytest.raises(IndexError, match="out of range"):
        ds.images(np.array([0, N]))
    with pytest.raises(ValueError, match="integers"):
        factors_of(np.array([0.5]))
    with pytest.raises(ValueError, match="shape index must be in"):
        index_of([3, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="orientation index must be in"):
        rasterize([[0, 0, 40, 0, 0]])
    with pytest.raises(ValueError, match="pos_y index must be in"):
        factor_values([0, 0, 0, 0, -1])
    with pytest.raises(ValueError, match=r"factors must have shape \[\.\.\., 5\]"):
        index_of([0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"factors must have shape \[n, 5\]"):
        rasterize(np.zeros((2, 3, 5), np.int64))
    with pytest.raises(ValueError, match="integer factor indices"):
        rasterize(np.zeros((1, 5)))


def test_sample_factors_and_split():
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 30))
    factors = DSprites.sample_factors(20_000, seed)
    assert factors.shape == (20_000, 5) and factors.dtype == np.int64
    for column, size in enumerate(SIZES):
        assert set(np.unique(factors[:, column])) == set(range(size))
    np.testing.assert_array_equal(factors, DSprites.sample_factors(20_000, np.random.default_rng(seed)))
    assert DSprites.sample_factors(0, rng).shape == (0, 5)
    with pytest.raises(ValueError, match="n must be"):
        DSprites.sample_factors(-1, rng)

    train, held_out = DSprites.split(0.1, seed)
    assert len(held_out) == round(0.1 * N) and len(train) + len(held_out) == N
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held_out) > 0)
    assert np.intersect1d(train, held_out).size == 0
    np.testing.assert_array_equal(held_out, DSprites.split(0.1, seed)[1])
    assert not np.array_equal(held_out, DSprites.split(0.1, seed + 1)[1])
    with pytest.raises(ValueError, match="held_out_fraction"):
        DSprites.split(1.5, seed)


def test_dataloader_batches(ds):
    indices = np.random.default_rng().integers(0, N, 10).tolist()
    subset = torch.utils.data.Subset(ds, indices)
    batch = next(iter(DataLoader(subset, batch_size=10)))
    assert batch.shape == (10, 1, 64, 64)
    torch.testing.assert_close(batch, torch.stack([ds[i] for i in indices]), rtol=0, atol=0)


def write_npz(path, imgs, latents):
    np.savez_compressed(path, imgs=imgs, latents_classes=latents,
                        latents_values=latents.astype(np.float64))


def test_read_npz_streams_and_packs(tmp_path):
    rng = np.random.default_rng()
    imgs = rng.integers(0, 2, (11, 64, 64), dtype=np.uint8)
    latents = rng.integers(0, 3, (11, 6))
    write_npz(tmp_path / "small.npz", imgs, latents)
    packed, read_latents = read_npz(tmp_path / "small.npz", chunk_rows=4)
    assert packed.shape == (11, 64, 8)
    np.testing.assert_array_equal(np.unpackbits(packed, axis=-1), imgs)
    np.testing.assert_array_equal(read_latents, latents)


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        DSprites(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not an npz"):
        DSprites(tmp_path / "text.npz")
    np.savez(tmp_path / "nokeys.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no 'latents_classes' array"):
        DSprites(tmp_path / "nokeys.npz")
    with zipfile.ZipFile(tmp_path / "garbled.npz", "w") as archive:
        archive.writestr("latents_classes.npy", b"garbage")
    with pytest.raises(ValueError, match="not a valid .npy member"):
        DSprites(tmp_path / "garbled.npz")
    latents = np.zeros((4, 6), np.int64)
    write_npz(tmp_path / "shape.npz", np.zeros((4, 32, 32), np.uint8), latents)
    with pytest.raises(ValueError, match=r"imgs must be uint8 \[N, 64, 64\]"):
        DSprites(tmp_path / "shape.npz")
    write_npz(tmp_path / "gray.npz", np.full((4, 64, 64), 255, np.uint8), latents)
    with pytest.raises(ValueError, match="binary"):
        DSprites(tmp_path / "gray.npz")
    write_npz(tmp_path / "rows.npz", np.zeros((5, 64, 64), np.uint8), latents)
    with pytest.raises(ValueError, match="5 rows but latents_classes has 4"):
        DSprites(tmp_path / "rows.npz")
    write_npz(tmp_path / "cols.npz", np.zeros((4, 64, 64), np.uint8), np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match=r"latents_classes must be an integer array \[N, 6\]"):
        DSprites(tmp_path / "cols.npz")
    write_npz(tmp_path / "small.npz", np.zeros((4, 64, 64), np.uint8), latents)
    with pytest.raises(ValueError, match="has 4 images; dSprites has 737280"):
        DSprites(tmp_path / "small.npz")


def test_file_backed_dataset_serves_the_file(tmp_path, monkeypatch):
    """With a small grid patched in, a well-formed file is served instead of the renderer."""
    sizes = (3, 1, 1, 2, 2)
    count = math.prod(sizes)
    monkeypatch.setattr(dsprites_module, "FACTOR_SIZES", sizes)
    monkeypatch.setattr(dsprites_module, "NUM_IMAGES", count)
    factors = np.stack(np.unravel_index(np.arange(count), sizes), axis=-1)
    latents = np.concatenate([np.zeros((count, 1), np.int64), factors], axis=1)
    imgs = np.random.default_rng().integers(0, 2, (count, 64, 64), dtype=np.uint8)
    write_npz(tmp_path / "grid.npz", imgs, latents)
    ds = DSprites(tmp_path / "grid.npz")
    assert len(ds) == count
    for index in range(count):
        np.testing.assert_array_equal(ds[index][0].numpy(), imgs[index])
    np.testing.assert_array_equal(ds.render(factors[::-1].copy())[:, 0].numpy(), imgs[::-1])
    write_npz(tmp_path / "shuffled.npz", imgs, latents[::-1].copy())
    with pytest.raises(ValueError, match="row-major"):
        DSprites(tmp_path / "shuffled.npz")
