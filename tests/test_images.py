"""Users' own images (msvae.data.images.ImageFiles), the 64x64 digits, and msvae fit on both."""
import json

import numpy as np
import pytest
import torch

from msvae.cli import main
from msvae.data.images import DigitImages, ImageFiles

PIL = pytest.importorskip("PIL.Image")


def _rgb(n=5, h=40, w=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_arrays_in_every_layout_give_the_same_images(tmp_path):
    a = _rgb()
    np.save(tmp_path / "nhwc.npy", a)
    np.save(tmp_path / "nchw.npy", np.moveaxis(a, -1, 1).astype(np.float32) / 255)
    np.savez(tmp_path / "stored.npz", other=np.zeros(3), imgs=a)
    np.savez_compressed(tmp_path / "compressed.npz", a)
    reference = ImageFiles(tmp_path / "nhwc.npy")
    assert reference.channels == 3 and len(reference) == 5
    x = reference.images(np.arange(5))
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(reference._array, np.memmap)  # not read whole
    stored = ImageFiles(tmp_path / "stored.npz", key="imgs")
    assert isinstance(stored._array, np.memmap)
    for other in (stored, ImageFiles(tmp_path / "compressed.npz"), ImageFiles(tmp_path / "nchw.npy")):
        assert torch.allclose(other.images(np.arange(5)), x, atol=1e-6)
    # the centre square (40 x 40 of the 40 x 50 image), resized: a crop, not a squeeze
    crop = torch.from_numpy(np.moveaxis(a[:1, :, 5:45], -1, 1).astype(np.float32) / 255)
    expected = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(x[:1], expected.clamp(0, 1), atol=1e-6)
    grey = ImageFiles(tmp_path / "nhwc.npy", channels=1).images(np.array([0]))
    assert grey.shape == (1, 1, 64, 64)
    assert torch.allclose(grey[0, 0], 0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2], atol=1e-5)


def test_a_folder_of_files_of_any_size_and_mode(tmp_path):
    a = _rgb(3, 70, 90)
    (tmp_path / "sub").mkdir()
    PIL.fromarray(a[0]).save(tmp_path / "a.png")
    PIL.fromarray(a[1][:, :, 0]).save(tmp_path / "sub" / "b.png")  # grey, in a subfolder
    PIL.fromarray(a[2][:20, :30]).save(tmp_path / "sub" / "c.bmp")  # smaller than 64: upscaled
    (tmp_path / "notes.txt").write_text("not an image")
    files = ImageFiles(tmp_path)
    assert len(files) == 3 and files.channels == 3  # the first file (a.png) is colour
    x = files.images(np.arange(3))
    assert x.shape == (3, 3, 64, 64)
    assert torch.equal(x[1, 0], x[1, 1]) and torch.equal(x[1, 1], x[1, 2])  # grey copied to RGB
    assert ImageFiles(tmp_path, channels=1).images(np.arange(3)).shape == (3, 1, 64, 64)
    assert torch.equal(files[0], x[0]) and torch.equal(files[-1], x[2])


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no image files"),
    (lambda p: (p / "x.csv").write_text("1,2") and p / "x.csv", "neither a folder of images nor"),
    (lambda p: np.save(p / "flat.npy", np.zeros((4, 5))) or p / "flat.npy", "must be \\[N, H, W\\]"),
    (lambda p: np.save(p / "chan.npy", np.zeros((2, 5, 6, 7))) or p / "chan.npy", "1 or 3 channels"),
    (lambda p: (p / "bad.npy").write_bytes(b"garbage") and p / "bad.npy", "not a readable .npy"),
    (lambda p: (p / "bad.npz").write_bytes(b"garbage") and p / "bad.npz", "not a readable .npz"),
])
def test_bad_paths_are_refused_clearly(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        ImageFiles(make(tmp_path))


def test_bad_values_and_files_are_refused_when_read(tmp_path):
    np.save(tmp_path / "big.npy", np.full((2, 8, 8), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ImageFiles(tmp_path / "big.npy").images(np.array([0]))
    folder = tmp_path / "imgs"
    folder.mkdir()
    PIL.fromarray(_rgb(1)[0]).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    files = ImageFiles(folder)
    with pytest.raises(ValueError, match="b.png is not a readable image"):
        files.images(np.array([1]))
    with pytest.raises(ValueError, match="indices must be in"):
        files.images(np.array([2]))


def test_digit_images_have_the_digit_as_factor():
    digits = DigitImages()
    assert len(digits) == 1797 and digits.factor_names == ("digit",) and digits.class_sizes == (10,)
    x = digits.images(np.array([0, 5]))
    assert x.shape == (2, 1, 64, 64) and 0 <= x.min() and x.max() <= 1
    assert digits.factors(np.array([0, 5])).ravel().tolist() == digits.labels[[0, 5]].tolist()
    train, held = digits.split(0.1, seed=0)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 1797


# --no-w-centred: the neighbour table's refresh (16,384 encoded images) is not what these test
FIT = ["--stage1-steps", "3", "--stage2-steps", "3", "--batch-size", "8", "--latent-dim", "3",
       "--w-dim", "2", "--quiet", "--classifier-steps", "5", "--no-w-centred"]


def test_fit_on_a_users_images_skips_what_needs_factors(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(_rgb(30, 48, 64)):
        PIL.fromarray(image).save(folder / f"{i}.jpg")
    out = tmp_path / "run"
    main(["fit", "--out", str(out), "--data", str(folder), "--eval-size", "20", "--held-out", "0.7", *FIT])
    metrics = json.loads((out / "metrics.json").read_text())
    assert "the data has no factors" in metrics["skipped"] and "mig" not in metrics and "samples" not in metrics
    assert metrics["held_out_images"] == 20 and metrics["full"]["bce"] > 0
    assert json.loads((out / "config.json").read_text())["dataset"] == "files"
    assert "skipped" in capsys.readouterr().out
    assert (out / "samples.png").exists()


def test_fit_on_the_digits_scores_the_digit_factor(tmp_path):
    out = tmp_path / "run"
    main(["fit", "--out", str(out), "--dataset", "digits", "--eval-size", "100", *FIT])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out_images"] == 100 and "mig" in metrics and "samples" in metrics
    assert set(metrics["w_leak"]["z_nmi"]) == {"digit"}


@pytest.mark.parametrize("argv, message", [
    (["--data", "imgs", "--dataset", "digits"], "--data .* cannot be combined"),
    (["--dataset", "digits", "--dsprites", "x.npz"], "--dsprites is the dSprites file"),
    (["--data", "missing"], "--data missing: missing does not exist"),
    (["--dataset", "dsprites", "--shapes3d", "x.h5"], "--shapes3d is the 3D Shapes file"),
    (["--data", "imgs", "--shapes3d", "x.h5"], "--data .* cannot be combined"),
])
def test_dataset_options_that_do_not_fit_are_refused(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(SystemExit, match=message):
        main(["fit", "--out", "run", *argv, *FIT])
    assert not (tmp_path / "run" / "config.json").exists()
