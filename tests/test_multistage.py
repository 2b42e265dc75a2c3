"""Stage 2 and the multi-stage model at test size: losses, fit, resume, save/load, sample, traverse."""
import pytest
import torch

from conftest import toy_images
from msvae.evaluation import encode_images, reconstruction_summary, save_multistage_figures
from msvae.models import FlowStage2, MultiStageModel, RefinementDecoder, VAEStage2, build_stage2
from msvae.models.training import save_checkpoint
from msvae.losses import gaussian_kl
from msvae.models.stage2 import log_likelihood

SMALL = {"width": 8, "hidden": 32}


def small_model(stage2="vae", **options):
    if stage2 == "vae":
        options = {"w_dim": 4, "kl_warmup": 0, **options}
    elif stage2 == "mog":
        options = {"components": 3, **options}
    elif stage2 == "gan":
        options = {"w_dim": 4, **options}
    else:
        options = {"levels": 2, "steps": 1, "hidden": 8, "context_hidden": 4, "quantization": 2,
                   **options}
    return MultiStageModel.for_images(3, stage2=stage2, stage1_options=SMALL, **options)


def stage1_pair(model, x):
    with torch.no_grad():
        x1 = model.stage1.decoder(model.stage1.encoder(x)[0])
    return x1, torch.sigmoid(x1)


def test_untrained_refinement_decoder_returns_stage1_output():
    decoder = RefinementDecoder(w_dim=5, width=8, hidden=16)
    x1 = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(decoder(x1, torch.sigmoid(x1), torch.randn(3, 5)), x1)
    with pytest.raises(ValueError, match=r"w must have shape \[3, 5\]"):
        decoder(x1, torch.sigmoid(x1), torch.randn(3, 4))


def test_vae_stage2_loss_warms_up_free_bits_then_pays_the_kl_in_full():
    model = small_model(free_bits=10.0)
    stage2 = build_stage2({**model.stage2.config, "kl_warmup": 4})
    x = toy_images(6)
    x1, x1_mean = stage1_pair(model, x)
    total0, terms0 = stage2.training_loss(x, x1, x1_mean, step=0)
    torch.testing.assert_close(total0, terms0["recon"])  # KL weight 0 at the first step
    with torch.no_grad():  # q(w | x, x1) starts with random means and unit variances
        mu, logvar = stage2.posterior(x, x1_mean)
    torch.testing.assert_close(terms0["kl"].detach(), 0.5 * (mu ** 2).sum(1).mean())
    assert float(logvar.abs().max()) == 0.0
    torch.nn.init.normal_(stage2.encoder.head[-1].weight, std=0.3)  # an informative q(w | x, x1)
    torch.nn.init.normal_(stage2.decoder.ups[-1].weight, std=0.3)  # a decoder that reads w
    draws = [stage2.training_loss(x, x1, x1_mean, step=1) for _ in range(2)]
    assert float(draws[0][1]["kl"].detach()) > 0  # first half of the warm-up: an autoencoder, KL unpaid,
    torch.testing.assert_close(draws[0][0], draws[0][1]["recon"])
    torch.testing.assert_close(draws[0][1]["recon"], draws[1][1]["recon"])  # w = the mean, no noise
    total, terms = stage2.training_loss(x, x1, x1_mean, step=3)  # weight 0.5, floor 5 nats a dimension
    assert float(terms["recon"]) != float(stage2.training_loss(x, x1, x1_mean, step=3)[1]["recon"])  # noisy w
    with torch.no_grad():
        kl_per_dim = gaussian_kl(*stage2.posterior(x, x1_mean)).mean(0)
    torch.testing.assert_close(total, terms["recon"] + 0.5 * kl_per_dim.clamp(min=5.0).sum())
    total, terms = stage2.training_loss(x, x1, x1_mean, step=4)  # paid in full
    torch.testing.assert_close(total, terms["recon"] + terms["kl"])


def test_stage2_rejects_bad_settings():
    with pytest.raises(ValueError, match="stage 2 kind must be one of"):
        build_stage2({"kind": "diffusion"})
    with pytest.raises(ValueError, match="w_dim must be >= 1"):
        VAEStage2(w_dim=0)
    with pytest.raises(ValueError, match="free_bits and kl_warmup must be >= 0"):
        VAEStage2(free_bits=-1.0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        FlowStage2(quantization=1, levels=1, steps=1, hidden=4, context_hidden=4)


def test_fit_trains_both_stages_and_stage2_improves_on_stage1():
    data = toy_images(128)
    torch.manual_seed(0)
    model = small_model(w_dim=6)
    history = model.fit(data, stage1_steps=40, stage2_steps=60, batch_size=32, stage1_lr=2e-3,
                        stage2_lr=2e-3, log_every=20, progress=False)
    assert [h["step"] for h in history["stage1"]] == [20, 40]
    assert [h["step"] for h in history["stage2"]] == [20, 40, 60]
    assert history["stage2"][-1]["recon"] < history["stage2"][0]["recon"]
    encoded = encode_images(model, lambda i: data[torch.as_tensor(i)], torch.arange(64).numpy())
    summary = reconstruction_summary(encoded, model.stage2)
    assert summary["full"]["bce"] < summary["stage1"]["bce"]
    # trained on the bound it reports: the full model's negative ELBO is below stage 1's
    assert summary["nll_bound"]["full"]["nats"] < summary["nll_bound"]["stage1"]["nats"]
    assert len(summary["w_kl_per_dim"]) == 6 and summary["w_kl"] > 0


def test_stage1_is_frozen_during_stage2():
    model = small_model()
    data = toy_images(32)
    model.stage1.fit(data, steps=2, batch_size=8, progress=False)
    before = {k: v.clone() for k, v in model.stage1.state_dict().items()}
    model.stage2.fit(model.stage1, data, steps=3, batch_size=8, progress=False)
    for name, value in model.stage1.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)


def test_encode_decode_reconstruct_sample_traverse_shapes():
    model = small_model().eval()
    x = toy_images(5)
    z, w = model.encode(x)
    assert z.shape == (5, 3) and w.shape == (5, 4)
    torch.testing.assert_close(model.reconstruct(x), model.decode(z, w))
    torch.testing.assert_close(model.reconstruct(x, "stage1"), model.stage1.reconstruct(x))
    with pytest.raises(ValueError, match="stage must be one of"):
        model.reconstruct(x, "stage2")
    assert model.sample(7).shape == (7, 1, 64, 64)
    with pytest.raises(ValueError, match="n must be a positive int"):
        model.sample(0)
    values = [-1.0, 0.0, 2.0]
    images = model.traverse(1, values, x=x[0])
    assert images.shape == (3, 1, 64, 64)
    codes = z[0].repeat(3, 1)
    codes[:, 1] = torch.tensor(values)
    torch.testing.assert_close(images, model.decode(codes, w[:1].expand(3, -1)))
    with pytest.raises(ValueError, match=r"k must be in \[0, 3\)"):
        model.traverse(3, values)
    with pytest.raises(ValueError, match="z and w must have shapes"):
        model.traverse(0, values, w=torch.zeros(5))


@pytest.mark.parametrize("kind", ["vae", "mog", "gan"])
def test_save_load_round_trip_and_no_pickled_code(tmp_path, kind):
    model = small_model(kind)
    model.fit(toy_images(32), stage1_steps=2, stage2_steps=2, batch_size=8, progress=False)
    model.save(tmp_path / "model.pt")
    loaded = MultiStageModel.load(tmp_path / "model.pt")
    x = toy_images(4, seed=1)
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))
    assert loaded.config == model.config and loaded.history == model.history
    save_checkpoint(tmp_path / "evil.pt", {"config": torch.nn.ReLU()})
    with pytest.raises(ValueError, match="refused for safety"):
        MultiStageModel.load(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        MultiStageModel.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("kind", ["vae", "mog", "gan"])
def test_interrupted_fit_resumes_exactly(tmp_path, kind):
    data = toy_images(64)
    kwargs = dict(stage1_steps=6, stage2_steps=6, batch_size=16, log_every=2, progress=False,
                  checkpoint_every=2)
    torch.manual_seed(3)
    straight = small_model(kind)
    initial = {k: v.clone() for k, v in straight.state_dict().items()}
    straight.fit(data, **kwargs)
    interrupted = small_model(kind)
    interrupted.load_state_dict(initial)
    interrupted.fit(data, checkpoint_dir=tmp_path, **{**kwargs, "stage2_steps": 2})
    resumed = small_model(kind)
    resumed.fit(data, checkpoint_dir=tmp_path, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert [h["step"] for h in resumed.history["stage2"]] == [2, 4, 6]


def test_time_limit_counts_earlier_runs(tmp_path):
    data = toy_images(16)
    model = small_model()
    model.stage1.fit(data, steps=1000, batch_size=4, time_limit=0.0, progress=False,
                     checkpoint_dir=tmp_path)
    assert model.stage1.history[-1]["step"] == 1
    again = small_model()  # the budget is spent: a rerun loads the checkpoint and trains no more
    again.stage1.fit(data, steps=1000, batch_size=4, time_limit=0.0, progress=False,
                     checkpoint_dir=tmp_path)
    assert again.stage1.history[-1]["step"] == 1
    torch.testing.assert_close(again.stage1.state_dict(), model.stage1.state_dict())


def test_untrained_flow_stage2_is_stage1_in_likelihood_and_in_samples():
    torch.manual_seed(0)
    model = small_model("flow")
    x = toy_images(4)
    x1, x1_mean = stage1_pair(model, x)
    x1 = 4 * x1  # a confident stage 1: pixel probabilities near 0 and 1 as well as between
    x1_mean = torch.sigmoid(x1)
    torch.testing.assert_close(model.stage2.log_prob(x, x1, x1_mean), log_likelihood(x, x1, "bernoulli"),
                               atol=2e-3, rtol=1e-6)
    n = 3000  # samples given one x1: independent pixels with stage 1's probabilities
    draws = model.stage2.generate(x1[:1].expand(n, -1, -1, -1), x1_mean[:1].expand(n, -1, -1, -1),
                                  model.stage2.sample_w(n))
    torch.testing.assert_close(draws.mean(0), x1_mean[0], atol=0.04, rtol=0)
    with pytest.raises(ValueError, match="a Bernoulli model has 2 levels"):
        FlowStage2(quantization=256, likelihood="bernoulli")


def test_flow_stage2_is_exact_and_gives_likelihoods(tmp_path):
    torch.manual_seed(0)
    model = small_model("flow")
    data = toy_images(32)
    history = model.fit(data, stage1_steps=2, stage2_steps=6, batch_size=8, stage2_lr=1e-3,
                        log_every=3, progress=False)
    assert history["stage2"][-1]["bits_per_dim"] < history["stage2"][0]["bits_per_dim"]
    x = data[:4]
    z, w = model.encode(x)
    assert w.shape == (4, 64 * 64)
    torch.testing.assert_close(model.reconstruct(x), x)  # a flow is lossless
    samples = model.sample(3)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    x1, x1_mean = stage1_pair(model, x)
    log_p = model.stage2.log_prob(x, x1, x1_mean)
    assert log_p.shape == (4,) and bool(torch.isfinite(log_p).all()) and bool((log_p <= 0).all())
    model.save(tmp_path / "flow.pt")
    torch.testing.assert_close(MultiStageModel.load(tmp_path / "flow.pt").encode(x)[1], w)
    summary = reconstruction_summary(encode_images(model, lambda i: data[torch.as_tensor(i)],
                                                   torch.arange(8).numpy()), model.stage2)
    assert summary["full"]["exact_inverse"] and "full_over_stage1" not in summary
    nll = summary["nll_bound"]
    assert nll["bound"] == "dequantized" and nll["full"]["nats"] > 0 and nll["stage1"]["nats"] > 0


def test_figures_are_written(tmp_path):
    model = small_model()
    paths = save_multistage_figures(model, toy_images(4), tmp_path, steps=5, num_samples=9)
    assert [p.name for p in paths] == ["reconstructions.png", "traversals.png",
                                       "traversals_stage1.png", "samples.png", "samples_stage1.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_mixture_stage2_likelihood_is_the_sum_over_its_components():
    """``log p(x | x1) = log sum_k pi_k(x1) prod_pixels Bernoulli(x | logits_k)``, brute force."""
    model = small_model("mog", components=4).eval()
    torch.nn.init.normal_(model.stage2.weights.net.head[-1].weight, std=0.5)  # unequal weights
    x = toy_images(3)
    x1, x1_mean = stage1_pair(model, x)
    with torch.no_grad():
        outputs = model.stage2.trunk(x1, x1_mean)  # [3, 4, 1, 64, 64]
        log_pi = torch.log_softmax(model.stage2.weights(x1_mean), 1)
    for i in range(3):
        per_k = [float(log_pi[i, k]) - float(torch.nn.functional.binary_cross_entropy_with_logits(
            outputs[i, k], x[i], reduction="sum")) for k in range(4)]
        expected = max(per_k) + torch.tensor(per_k).sub(max(per_k)).exp().sum().log().item()
        got = model.stage2.log_likelihood_bound(x[i:i + 1], x1[i:i + 1], x1_mean[i:i + 1])
        assert float(got["log_likelihood"]) == pytest.approx(expected, rel=1e-5)
        best = max(range(4), key=lambda k: per_k[k])  # reconstruction: the most probable component
        w = model.stage2.encode(x[i:i + 1], x1[i:i + 1], x1_mean[i:i + 1])
        torch.testing.assert_close(model.stage2.generate(x1[i:i + 1], x1_mean[i:i + 1], w)[0],
                                   torch.sigmoid(outputs[i, best]))
    with pytest.raises(ValueError, match="components must be >= 2"):
        build_stage2({"kind": "mog", "components": 1})


def test_mixture_w_from_its_prior_draws_components_by_their_weights():
    model = small_model("mog", components=3).eval()
    torch.nn.init.normal_(model.stage2.weights.net.head[-1].weight, std=1.0)
    x1, x1_mean = stage1_pair(model, toy_images(1))
    n = 6000
    with torch.no_grad():
        images = model.stage2.generate(x1.expand(n, -1, -1, -1), x1_mean.expand(n, -1, -1, -1),
                                       model.stage2.sample_w(n))
        means = torch.sigmoid(model.stage2.trunk(x1, x1_mean)[0])  # [3, 1, 64, 64]
        pi = torch.softmax(model.stage2.weights(x1_mean), 1)[0]
    picked = (images[:, None] - means[None]).abs().flatten(2).sum(2).argmin(1)
    freq = torch.bincount(picked, minlength=3).double() / n
    torch.testing.assert_close(freq, pi.double(), atol=0.03, rtol=0.0)


def test_gan_losses_have_the_right_signs():
    """On a fixed generator the discriminator's hinge loss falls as it trains; the generator's
    adversarial term is ``-D(fake)``; the untrained generator returns stage 1's image."""
    model = small_model("gan")
    stage2 = model.stage2
    x = toy_images(16)
    x1, x1_mean = stage1_pair(model, x)
    torch.testing.assert_close(stage2.generate(x1, x1_mean, stage2.sample_w(16)), x1_mean)
    with torch.no_grad():
        fake = stage2.generate(x1, x1_mean, stage2.sample_w(16))
    optimizer = stage2.optimizers(1e-3)["discriminator_optimizer"]
    losses = []
    for step in range(30):
        loss = stage2.discriminator_loss(x, fake, x1_mean, r1=step % 2 == 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.2
    stage2.eval()  # spectral norm's power iteration holds still
    torch.manual_seed(0)
    total, terms = stage2.training_loss(x, x1, x1_mean, step=0)
    torch.manual_seed(0)
    w = torch.randn(16, 4)
    with torch.no_grad():
        adversarial = -stage2.discriminator(torch.sigmoid(stage2.generator(x1, x1_mean, w)), x1_mean).mean()
    torch.testing.assert_close(terms["adversarial"].detach(), adversarial)
    assert stage2.bound is None
    with pytest.raises(ValueError, match="r1_every >= 1"):
        build_stage2({"kind": "gan", "r1_every": 0})
