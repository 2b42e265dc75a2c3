"""The procedural 3D Shapes grid (msvae.data.shapes3d)."""
import numpy as np
import pytest
import torch

from msvae.data.shapes3d import (FACTOR_SIZES, FLOOR, NUM_IMAGES, OBJECT, WALL, Shapes3D, factor_values,
                                 factors_of, index_of)


def test_grid_size_and_order_are_the_official_files():
    assert NUM_IMAGES == 480_000 and FACTOR_SIZES == (10, 10, 10, 8, 4, 15)
    assert factors_of([0]).tolist() == [[0, 0, 0, 0, 0, 0]]
    assert factors_of([1]).tolist() == [[0, 0, 0, 0, 0, 1]]  # orientation fastest
    assert factors_of([15]).tolist() == [[0, 0, 0, 0, 1, 0]]
    assert factors_of([NUM_IMAGES - 1]).tolist() == [[9, 9, 9, 7, 3, 14]]
    i = np.random.default_rng(0).integers(0, NUM_IMAGES, 100)
    assert np.array_equal(index_of(factors_of(i)), i)
    values = factor_values([[9, 0, 5, 7, 3, 0]])[0]
    assert np.allclose(values, [0.9, 0.0, 0.5, 1.25, 3.0, -30.0])
    for bad in ([-1], [NUM_IMAGES]):
        with pytest.raises(ValueError, match="indices must be"):
            factors_of(bad)
    with pytest.raises(ValueError, match="factors must be"):
        index_of([[10, 0, 0, 0, 0, 0]])


def _image(ds, **changes):
    factors = {**dict(floor_hue=2, wall_hue=5, object_hue=8, scale=4, shape=1, orientation=7), **changes}
    return ds.render(np.array([[factors[n] for n in ds.factor_names]]))[0]


def test_each_hue_changes_only_its_own_surface():
    ds = Shapes3D()
    base = _image(ds)
    assert base.shape == (3, 64, 64) and base.dtype == torch.float32 and 0 <= base.min() and base.max() <= 1
    surface, _ = ds.geometry(4, 1, 7)
    for factor, own in (("floor_hue", FLOOR), ("wall_hue", WALL), ("object_hue", OBJECT)):
        changed = (_image(ds, **{factor: 0}) != base).any(0).numpy()
        assert changed.any() and not changed[surface != own].any(), factor
        assert changed[surface == own].mean() > 0.9, factor


def test_geometry_factors_move_the_object_and_the_room():
    ds = Shapes3D()
    areas = [(ds.geometry(scale, 2, 7)[0] == OBJECT).sum() for scale in range(8)]
    assert all(b > a for a, b in zip(areas, areas[1:]))  # a larger sphere covers more pixels
    silhouettes = [ds.geometry(4, shape, 7)[0] == OBJECT for shape in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (silhouettes[a] != silhouettes[b]).sum() > 20, (a, b)
    walls = [(ds.geometry(4, 0, o)[0] == WALL) for o in (0, 7, 14)]
    assert (walls[0] != walls[1]).sum() > 50 and (walls[0] != walls[2]).sum() > 50  # the view turns
    # the object stands in the middle of the picture, on the floor
    rows, cols = np.nonzero(silhouettes[0])
    assert 20 < cols.mean() < 44 and rows.max() > 32


def test_rendering_is_deterministic_and_random_access():
    i = np.array([5, 479_999, 123_456, 5])
    a, b = Shapes3D().images(i), Shapes3D().images(i)
    assert torch.equal(a, b) and torch.equal(a[0], a[3])
    assert torch.equal(Shapes3D()[123_456], a[2]) and torch.equal(Shapes3D()[-1], a[1])
    train, held = Shapes3D.split(0.1, seed=0)
    assert len(held) == 48_000 and len(np.intersect1d(train, held)) == 0


def test_a_file_that_is_not_3dshapes_is_refused(tmp_path):
    path = tmp_path / "3dshapes.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="needs h5py|not a readable HDF5 file"):
        Shapes3D(path)


def test_fit_on_shapes3d_trains_rgb_models_and_judges_its_six_factors(tmp_path):
    import json

    from msvae.cli import main
    from msvae.models import MultiStageModel

    out = tmp_path / "run"
    main(["fit", "--out", str(out), "--dataset", "shapes3d", "--stage1-steps", "2", "--stage2-steps", "2",
          "--batch-size", "8", "--eval-size", "40", "--latent-dim", "3", "--w-dim", "2", "--quiet",
          "--classifier-steps", "3", "--no-w-centred"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["w_leak"]["z_nmi"]) == set(Shapes3D.factor_names)
    assert len(metrics["samples"]["classifier_accuracy"]) == 6
    assert MultiStageModel.load(out / "model.pt").sample(2).shape == (2, 3, 64, 64)
