"""Stage-1 methods by name (msvae.methods), the CLI's --method, and the decomposition benchmark."""
import json

import numpy as np
import pytest
import torch

from msvae import cli, decomposition_benchmark
from msvae.data import digits
from msvae.losses import (BetaTCVAELoss, BetaVAELoss, DecompositionLoss, DIPVAELoss, FactorVAELoss)
from msvae.methods import METHOD_OPTIONS, METHODS, PRIORS, make_prior, stage1_loss
from msvae.models import DisentangledVAE
from msvae.priors import AnisotropicGaussian, LearnedGaussianMixture, SpikeAndSlab


@pytest.mark.parametrize("method, kind", [("betavae", BetaVAELoss), ("betatcvae", BetaTCVAELoss),
                                          ("factorvae", FactorVAELoss), ("dipvae", DIPVAELoss),
                                          ("decomposition", DecompositionLoss)])
def test_each_method_builds_its_loss_and_trains_a_step(method, kind):
    loss = stage1_loss(method, latent_dim=3, dataset_size=40)
    assert isinstance(loss, kind)
    model = DisentangledVAE.for_vectors(6, 3, hidden=(16,), likelihood="bernoulli")
    history = model.fit(torch.rand(40, 6), loss=loss, steps=2, batch_size=8, progress=False, log_every=1)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


def test_method_options_are_the_methods_own():
    loss = stage1_loss("betatcvae", latent_dim=4, dataset_size=10, beta=2.5, gamma=None)
    assert (loss.beta, loss.gamma) == (2.5, METHOD_OPTIONS["betatcvae"]["gamma"])
    with pytest.raises(ValueError, match=r"betavae.*\['beta'\].*\['gamma'\]"):
        stage1_loss("betavae", latent_dim=4, dataset_size=10, gamma=3.0)
    with pytest.raises(ValueError, match="method must be one of"):
        stage1_loss("vae", latent_dim=4, dataset_size=10)
    with pytest.raises(ValueError, match="divergence must be one of"):
        stage1_loss("decomposition", latent_dim=4, dataset_size=10, divergence="kl")


def test_make_prior_kinds():
    anisotropic = make_prior("anisotropic", 4, anisotropy=8.0)
    assert isinstance(anisotropic, AnisotropicGaussian)
    assert torch.allclose(anisotropic.scale, torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert isinstance(make_prior("mixture", 3, prior_components=5), LearnedGaussianMixture)
    assert make_prior("mixture", 3, prior_components=5).loc.shape == (5, 3)
    assert isinstance(make_prior("spikeslab", 3), SpikeAndSlab)
    for name in PRIORS:
        assert make_prior(name, 3) is not None
    with pytest.raises(ValueError, match="anisotropy must be"):
        make_prior("anisotropic", 3, anisotropy=1.0)
    with pytest.raises(ValueError, match="prior must be one of"):
        make_prior("laplace", 3)


def _config(argv):
    args = cli.build_parser().parse_args(argv)
    config = {**cli.PRESETS[args.preset], **{k: v for k, v in vars(args).items()
                                              if (v is not None or k in cli.METHOD_FLAGS) and k != "func"}}
    cli._resolve_method(config, cli.PRESETS[args.preset])
    return config


def test_cli_method_takes_the_preset_for_its_own_method_and_refuses_other_options():
    assert _config(["fit", "--out", "x"])["method_options"] == cli.PRESETS["quick"]["method_options"]
    assert _config(["fit", "--out", "x", "--beta", "3"])["method_options"]["beta"] == 3.0
    # another method: its own defaults, not the preset's beta-TCVAE values
    assert _config(["fit", "--out", "x", "--method", "betavae"])["method_options"] == {"beta": 4.0}
    config = _config(["fit", "--out", "x", "--method", "decomposition", "--prior", "anisotropic",
                      "--alpha", "2", "--beta", "4"])
    loss = cli._stage1_loss(config, 100)
    assert isinstance(loss, DecompositionLoss) and isinstance(loss.prior, AnisotropicGaussian)
    assert (loss.alpha, loss.beta) == (2.0, 4.0)
    with pytest.raises(SystemExit, match="--gamma is not an option of --method betavae"):
        _config(["fit", "--out", "x", "--method", "betavae", "--gamma", "3"])
    with pytest.raises(SystemExit, match="--prior is not an option of --method betatcvae"):
        _config(["fit", "--out", "x", "--prior", "mixture"])


def test_digits_split_is_stratified_and_reproducible():
    x, labels = digits.load_digits()
    assert x.shape == (digits.NUM_IMAGES, 64) and 0.0 <= float(x.min()) and float(x.max()) == 1.0
    train, held = digits.split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(counts, 0.2, atol=0.01)
    assert np.array_equal(held, digits.split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(held, digits.split(labels, 0.2, seed=1)[1])


def test_decomposition_benchmark_resumes_and_summarises(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["--out", str(tmp_path), "--experiments", "clusters", "--seeds", "0", "1", "--quiet", "--steps"]
    argv, other = [*argv, "20"], [*argv, "21"]
    summary = decomposition_benchmark.main(argv)
    rows = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(rows) == 2 * len(decomposition_benchmark.EXPERIMENTS["clusters"].arms)  # 2 seeds
    (clusters,) = summary
    experiment = decomposition_benchmark.EXPERIMENTS["clusters"]
    arms = list(experiment.arms)
    structured = [a for a in arms if experiment.arms[a]["prior"] != "isotropic"]
    assert set(clusters["verdicts"]) == set(structured)
    # each structured arm is judged against the isotropic arm of its own objective
    assert {a: decomposition_benchmark._baseline(experiment, a) for a in structured} == {
        "mixture": "isotropic", "mixture+kl": "isotropic+kl"}
    assert all(v in ("beyond one std", "same direction", "opposite") for v in clusters["verdicts"].values())
    assert set(clusters["arms"]) == set(arms)
    assert "mixture_nmi" in clusters["arms"]["mixture"] and "mixture_nmi" not in clusters["arms"]["isotropic"]
    assert (tmp_path / "clusters.png").stat().st_size > 1000 and "| mixture |" in (tmp_path / "summary.md").read_text()
    decomposition_benchmark.main(argv)  # all done: nothing is trained again
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == rows
    with pytest.raises(ValueError, match="other settings"):
        decomposition_benchmark.main(other)
    first = json.loads(rows[0])
    assert first["settings"]["steps"] == 20 and first["scores"]["recon"] > 0


def test_decomposition_benchmark_with_a_second_stage_reports_its_reconstruction(tmp_path):
    pytest.importorskip("matplotlib")
    decomposition_benchmark.main(["--out", str(tmp_path), "--experiments", "sparse", "--seeds", "0",
                                  "--steps", "30", "--stage2-steps", "30", "--quiet"])
    rows = [json.loads(r) for r in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert all(r["settings"]["stage2_steps"] == 30 and r["scores"]["full_recon"] > 0 for r in rows)
    assert "full_recon" in (tmp_path / "summary.md").read_text()


def test_headline_benchmark_resumes_and_checks_the_claim(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from msvae import headline_benchmark

    # the neighbour table's refresh (16,384 encoded images) is not what this tests
    monkeypatch.setitem(headline_benchmark.STAGE2, "centred", False)

    argv = ["compare-methods", "--out", str(tmp_path), "--datasets", "dsprites", "--methods", "vae",
            "betatcvae6", "--seeds", "0", "--stage1-steps", "2", "--stage2-steps", "2", "--eval-size", "40",
            "--quiet", "--threads", "1"]
    cli.main(argv)
    rows = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(r)["method"] for r in rows] == ["vae", "betatcvae6"]
    summary = json.loads((tmp_path / "summary.json").read_text())["dsprites"]
    assert set(summary["methods"]) == {"vae", "betatcvae6"}
    assert isinstance(summary["tcvae6_full_beats_vae_stage1"], bool)
    assert (tmp_path / "plane_dsprites.png").stat().st_size > 1000
    cli.main(argv)  # finished: nothing is trained again
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == rows
    with pytest.raises(ValueError, match="other settings"):
        headline_benchmark.run(tmp_path, ("dsprites",), ("vae",), seeds=(1,), stage1_steps=3, stage2_steps=2,
                               eval_size=40, progress=False)
