"""The stage-2 contract and coherence: every stage 2 obeys one interface, trains on sampled codes,
pays for ``w`` in full, and starts as exactly stage 1."""
import math

import pytest
import torch

from conftest import toy_images
from msvae.data.tabular import Span
from msvae.evaluation import encode_images, reconstruction_summary
from msvae.models import (MultiStageModel, SecondStage, TabularFlowStage2, TabularMixtureStage2,
                          TabularVAEStage2, build_stage2)
from msvae.models.stage2 import BOUNDS, log_likelihood, sampled_stage1_output
from msvae.models.stage1 import DisentangledVAE
from msvae.models.training import kl_penalty

SMALL = {"width": 8, "hidden": 32}
SPANS = [Span("a", "scalar", 0, 1), Span("b", "softmax", 1, 3), Span("c", "binary", 4, 1)]


def image_model(kind, **options):
    options = {"vae": {"w_dim": 4, "kl_warmup": 0, **options}, "mog": {"components": 3, **options},
               "gan": {"w_dim": 4, **options},
               "flow": {"levels": 2, "steps": 1, "hidden": 8, "context_hidden": 4, "quantization": 2}}[kind]
    return MultiStageModel.for_images(3, stage2=kind, stage1_options=SMALL, **options)


def tabular_rows(n=6):
    g = torch.Generator().manual_seed(0)
    rows = torch.zeros(n, 5)
    rows[:, 0] = torch.randn(n, generator=g)
    rows[torch.arange(n), 1 + torch.randint(3, (n,), generator=g)] = 1.0
    rows[:, 4] = torch.randint(2, (n,), generator=g).float()
    return rows


def stage2_cases():
    """(stage 2, x, x1, x1_mean, rebuild) for every stage-2 class."""
    cases = []
    for kind, options in (("vae", {"encoder": "dense"}), ("vae", {"encoder": "pooled"}), ("flow", {}),
                          ("mog", {}), ("gan", {})):
        model = image_model(kind, **options)
        x = toy_images(3)
        _, _, x1, x1_mean = sampled_stage1_output(model.stage1, x)
        name = "-".join(["image", kind, *options.values()])
        cases.append(pytest.param(model.stage2, x, x1, x1_mean, build_stage2, id=name))
    x = tabular_rows()
    x1 = torch.randn(6, 5)
    for stage2 in (TabularVAEStage2(SPANS, w_dim=3, hidden=8), TabularFlowStage2(SPANS, layers=2, hidden=8),
                   TabularMixtureStage2(SPANS, components=3, hidden=8)):
        def rebuild(config, cls=type(stage2)):
            return cls(**{k: v for k, v in config.items() if k != "kind"})
        cases.append(pytest.param(stage2, x, x1, x1, rebuild, id=f"table-{stage2.config['kind']}"))
    return cases


@pytest.mark.parametrize("stage2, x, x1, x1_mean, rebuild", stage2_cases())
def test_every_stage2_obeys_the_contract(stage2, x, x1, x1_mean, rebuild):
    assert isinstance(stage2, SecondStage) and stage2.bound in BOUNDS
    stage2.eval()
    w = stage2.encode(x, x1, x1_mean)
    assert w.shape == (len(x), stage2.w_dim) and bool(torch.isfinite(w).all())
    assert stage2.generate(x1, x1_mean, w).shape == x.shape
    assert stage2.sample_w(5).shape == (5, stage2.w_dim)
    if stage2.bound is None:
        with pytest.raises(NotImplementedError, match="no tractable likelihood"):
            stage2.log_likelihood_bound(x, x1, x1_mean)
    else:
        terms = stage2.log_likelihood_bound(x, x1, x1_mean)
        assert terms["log_likelihood"].shape == (len(x),) and bool(torch.isfinite(terms["log_likelihood"]).all())
    if stage2.exact_inverse:
        torch.testing.assert_close(stage2.generate(x1, x1_mean, w), x)
    total, loss_terms = stage2.training_loss(x, x1, x1_mean, step=10 ** 6)
    assert total.dim() == 0 and "loss" in loss_terms
    copy = rebuild(stage2.config)
    copy.load_state_dict(stage2.state_dict())  # after a training step (the tabular flow's first sets its linear layer)
    torch.testing.assert_close(copy.eval().encode(x, x1, x1_mean), stage2.encode(x, x1, x1_mean))


def test_a_stage2_without_a_likelihood_says_so():
    class Implicit(SecondStage):
        w_dim = 2

    with pytest.raises(NotImplementedError, match="Implicit has no tractable likelihood"):
        Implicit().log_likelihood_bound(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))


def test_stage2_trains_on_codes_sampled_from_the_posterior():
    """One image repeated: with the posterior mean every row of a batch would get the same ``x1``;
    sampled codes give each row its own, exactly ``dec1(mu + sigma * eps)``."""
    model = image_model("vae")
    with torch.no_grad():  # a wide posterior, so samples differ visibly from the mean
        model.stage1.encoder.head[-1].bias[3:] = 2.0
    data = toy_images(1).repeat(8, 1, 1, 1)
    seen = []
    original = model.stage2.training_loss

    def recording(x, x1, x1_mean, step):
        seen.append(x1.clone())
        return original(x, x1, x1_mean, step)

    model.stage2.training_loss = recording
    model.stage2.fit(model.stage1, data, steps=2, batch_size=8, progress=False, seed=5)
    with torch.no_grad():
        mu, logvar = model.stage1.encoder(data)
        at_mean = model.stage1.decoder(mu)
    for x1 in seen:
        assert (x1 - at_mean).abs().max() > 1e-3  # not the mean code
        assert (x1[1:] - x1[:1]).abs().amax((1, 2, 3)).min() > 1e-4  # a fresh draw per row
    # The exact draw: fit seeds torch with its seed, then draws eps for the batch.
    torch.manual_seed(5)
    eps = torch.randn_like(mu)
    with torch.no_grad():
        expected = model.stage1.decoder(mu + eps * (0.5 * logvar).exp())
    torch.testing.assert_close(seen[0], expected)


def test_kl_penalty_warms_up_and_ends_paid_in_full():
    kl = torch.tensor([0.05, 0.3, 2.0])
    assert float(kl_penalty(kl, 0, free_bits=0.5, warmup_steps=10)) == 0.0
    # half way: weight 0.5, floor 0.25 nats per dimension
    assert float(kl_penalty(kl, 5, 0.5, 10)) == pytest.approx(0.5 * (0.25 + 0.3 + 2.0))
    for step in (10, 11, 1000):  # after the warm-up: weight 1, no floor
        assert float(kl_penalty(kl, step, 0.5, 10)) == pytest.approx(float(kl.sum()))
    assert float(kl_penalty(kl, 0, 0.5, 0)) == pytest.approx(float(kl.sum()))


def test_untrained_vae_stage2_is_stage1_plus_its_posteriors_kl():
    """The untrained decoder returns ``x1``, so the bound is stage 1's plus ``KL(q(w | x, x1) || p(w))``
    of the untrained encoder (random means, unit variances), and nothing else."""
    model = image_model("vae").eval()
    x = toy_images(6)
    _, _, x1, x1_mean = sampled_stage1_output(model.stage1, x)
    terms = model.stage2.log_likelihood_bound(x, x1, x1_mean)
    mu, logvar = model.stage2.posterior(x, x1_mean)
    assert float(logvar.abs().max()) == 0.0 and float(mu.abs().min()) > 0.0
    torch.testing.assert_close(terms["w_kl"], 0.5 * mu ** 2)
    torch.testing.assert_close(terms["log_likelihood"],
                               log_likelihood(x, x1, "bernoulli") - terms["w_kl"].sum(1))
    encoded = encode_images(model, lambda i: x[torch.as_tensor(i)], torch.arange(6).numpy())
    torch.testing.assert_close(encoded["nll_full"], encoded["nll_stage1"] + encoded["w_kl"].sum(1))  # same z
    summary = reconstruction_summary(encoded, model.stage2)
    assert summary["nll_bound"]["full_over_stage1"] == pytest.approx(
        1.0 + summary["w_kl"] / summary["nll_bound"]["stage1"]["nats"])
    assert summary["nll_bound"]["stage1"]["bits_per_dim"] == pytest.approx(
        summary["nll_bound"]["stage1"]["nats"] / (64 * 64 * math.log(2)))

    tabular = TabularVAEStage2(SPANS, w_dim=3, hidden=8)
    rows, x1 = tabular_rows(), torch.randn(6, 5)
    torch.testing.assert_close(tabular.log_likelihood_bound(rows, x1, x1)["log_likelihood"],
                               -tabular.likelihood(rows, x1))


def test_nll_bound_is_stage1s_negative_elbo():
    """``nll_stage1`` is ``-log p1(x | z) + KL(q(z | x) || p(z))`` at one seeded draw ``z``."""
    stage1 = DisentangledVAE.for_images(3, **SMALL).eval()
    x = toy_images(4)
    encoded = encode_images(stage1, lambda i: x[torch.as_tensor(i)], torch.arange(4).numpy(), seed=7)
    torch.manual_seed(7)
    with torch.no_grad():
        mu, logvar = stage1.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(stage1.decoder(z), x, reduction="none")
        kl = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1)
    torch.testing.assert_close(encoded["nll_stage1"], bce.flatten(1).sum(1) + kl.sum(1))
    assert "nll_full" not in encoded


def test_pooled_w_encoder_does_not_see_where_the_object_is():
    """Shifted by a multiple of its stride (8 px), away from the borders, an image and its ``x1``
    get the same ``q(w | x, x1)``, centring included: ``w`` cannot copy the position ``z`` gives."""
    from msvae.models import VAEStage2

    stage2 = VAEStage2(w_dim=4, width=8, hidden=16, encoder="pooled", centring="regression")
    torch.nn.init.normal_(stage2.encoder.head[-1].weight)  # not the prior: a real map
    torch.nn.init.normal_(stage2.centre.net.head[-1].weight)  # and a real centring r(x1)
    stage2.centring_weight.fill_(1.0)
    x = torch.zeros(2, 1, 64, 64)
    x[0, 0, 24:32, 24:30] = 1.0
    x[1, 0, 32:40, 32:38] = 1.0  # the same shape, 8 px down and right
    x1_mean = 0.5 * x  # stage 1's fainter guess, shifted with it
    mu, logvar = stage2.posterior(x, x1_mean)
    torch.testing.assert_close(mu[0], mu[1])
    torch.testing.assert_close(logvar[0], logvar[1])
    with pytest.raises(ValueError, match="encoder must be one of"):
        VAEStage2(encoder="attention")


def test_centred_w_loses_its_dependence_on_x1_and_only_r_learns_the_centring():
    """``q(w | x, x1)``'s mean is ``m(x, x1) - r(x1)``: the centring loss trains ``r`` alone, the
    ELBO does not reach ``r``, and a trained ``r`` removes what ``m`` says about ``x1``."""
    from msvae.models import VAEStage2

    torch.manual_seed(0)
    stage2 = VAEStage2(w_dim=4, width=8, hidden=32, encoder="dense", kl_warmup=10, centring="regression")
    torch.nn.init.normal_(stage2.encoder.head[-1].weight, std=0.3)  # m depends on where the square is
    x = toy_images(4)
    for step, weight in ((0, 0.0), (10, 0.0), (15, 0.5), (25, 1.0)):  # phased in after the KL's warm-up
        stage2.training_loss(x, x, x, step)
        assert float(stage2.centring_weight) == weight
    x = toy_images(128)
    total, terms = stage2.training_loss(x, torch.logit(x.clamp(0.01, 0.99)), x, step=100)
    centre = set(stage2.centre.parameters())
    elbo_grads = torch.autograd.grad(terms["loss"], [p for p in stage2.parameters()], allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0
               for p, g in zip(stage2.parameters(), elbo_grads) if p in centre)
    centring_grads = torch.autograd.grad(terms["centring"], list(stage2.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0
               for p, g in zip(stage2.parameters(), centring_grads) if p not in centre)

    with torch.no_grad():
        m = stage2.encoder(torch.cat([x, x, torch.zeros_like(x)], 1))[0]
        before = float(stage2.posterior(x, x)[0].pow(2).sum(1).mean())
    assert before == pytest.approx(float(m.pow(2).sum(1).mean()))  # r starts at 0
    optimizer = torch.optim.Adam(stage2.centre.parameters(), lr=5e-3)
    for _ in range(150):
        optimizer.zero_grad()
        stage2.training_loss(x, x, x, step=100)[1]["centring"].backward()
        optimizer.step()
    held_out = toy_images(128, seed=1)
    with torch.no_grad():
        after = float(stage2.posterior(x, x)[0].pow(2).sum(1).mean())
        m_new = stage2.encoder(torch.cat([held_out, held_out, torch.zeros_like(held_out)], 1))[0]
        after_new = float(stage2.posterior(held_out, held_out)[0].pow(2).sum(1).mean())
    assert after < 0.1 * before
    assert after_new < 0.3 * float(m_new.pow(2).sum(1).mean())
    assert VAEStage2(centred=False).centre is None


def test_neighbour_centring_estimates_the_conditional_mean_of_recent_codes():
    """``NeighbourCentre`` keeps the last ``size`` pairs (key(x1), m) in a ring; ``r(x1)`` is the
    mean of ``m`` over the nearest keys, so for ``m = f(position) + noise`` it recovers ``f``."""
    from msvae.models.stage2 import NeighbourCentre

    g = torch.Generator().manual_seed(0)
    centre = NeighbourCentre(w_dim=2, channels=1, size=512, neighbours=16)
    assert centre(toy_images(3)).abs().max() == 0  # empty ring: r = 0
    images = toy_images(600)
    position = images.flatten(2).argmax(2).float()  # the square's top-left pixel index
    f = torch.cat([position / 4096, (position % 64) / 64], 1)
    for start in range(0, 600, 100):  # 600 pairs through a 512 ring: it wraps
        batch = slice(start, start + 100)
        centre.learn(images[batch], f[batch] + 0.3 * torch.randn(100, 2, generator=g), None)
    assert int(centre.filled) == 512 and int(centre.cursor) == 600 % 512
    held_out = toy_images(200, seed=5)
    position = held_out.flatten(2).argmax(2).float()
    target = torch.cat([position / 4096, (position % 64) / 64], 1)
    error = (centre(held_out) - target).pow(2).mean()
    assert error < 0.1 * target.var(0).sum()
    stage2 = build_stage2({"kind": "vae", "w_dim": 2, "width": 8, "hidden": 16, "centring": "neighbours"})
    assert {"centre.keys", "centre.values", "centre.filled", "centre.cursor"} <= set(stage2.state_dict())
    with pytest.raises(ValueError, match="centring must be one of"):
        build_stage2({"kind": "vae", "centring": "median"})


def test_neighbour_search_finds_the_nearest_keys_and_its_norms_are_rebuilt_on_loading():
    """The search ranks ``|k|^2 - 2 q.k`` with ``|k|^2`` kept beside the table: the neighbours are
    the brute-force nearest ones, and a table loaded from a state dict (which does not hold the
    norms) searches as the original does."""
    from msvae.models.stage2 import NeighbourCentre

    torch.manual_seed(0)
    centre = NeighbourCentre(w_dim=3, channels=1, size=64, neighbours=5, pool=16)
    images, codes = torch.rand(50, 1, 64, 64), torch.randn(50, 3)
    centre.learn(images, codes, None)
    queries = torch.rand(7, 1, 64, 64)
    nearest = torch.cdist(centre._key(queries).double(), centre.keys[:50].double()).topk(5, largest=False).indices
    assert torch.allclose(centre(queries), codes[nearest].mean(1), atol=1e-6)
    assert "key_norms" not in centre.state_dict()
    loaded = NeighbourCentre(w_dim=3, channels=1, size=64, neighbours=5, pool=16)
    loaded.load_state_dict(centre.state_dict())
    assert torch.allclose(loaded.key_norms, centre.keys.pow(2).sum(1))
    assert torch.equal(loaded(queries), centre(queries))


def test_after_fit_the_neighbour_table_holds_the_final_encoders_pairs_keyed_as_encode_queries(tmp_path):
    """``fit`` ends with ``finish``: the table is refilled, in order, with ``(key(x1(mu(x))),
    m(x, x1(mu(x))))`` for fresh training images, from the final networks; a rerun of the
    completed fit refills it identically."""
    from msvae.models.stage2 import NeighbourCentre, encoder_input
    from msvae.models.training import RandomBatches

    images = toy_images(40)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = image_model("vae", centring="neighbours", **SMALL)
        model.stage2.centre = NeighbourCentre(4, 1, size=20, neighbours=4)
        model.fit(images, stage1_steps=3, stage2_steps=3, batch_size=8, progress=False,
                  checkpoint_dir=tmp_path)
        models.append(model)
    table, again = models[0].stage2.centre, models[1].stage2.centre
    # 3 training batches of 8 left the ring's cursor at 24 % 20 = 4; the refill ends at 0
    assert int(table.filled) == 20 and int(table.cursor) == 0
    assert torch.equal(table.keys, again.keys) and torch.equal(table.values, again.values)
    model = models[0]
    torch.nn.init.normal_(model.stage2.encoder.head[-1].weight)  # codes that tell images apart
    model.stage2.finish(model.stage1, RandomBatches(images, 8, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        x1_mean = model.stage1_output(model.stage1.encode(images))[1]
        keys, m = table._key(x1_mean), model.stage2.encoder(encoder_input(images, x1_mean))[0]
    # each stored pair is one of the images' (exact distances: the matrix-product form's
    # rounding, ~5e-4 here, is larger than the gaps between some images' codes)
    match = torch.cdist(table.values, m, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
    assert len(set(match.tolist())) > 10  # fresh draws, not one image repeated
    assert torch.allclose(table.values, m[match], atol=1e-5)
    assert torch.allclose(table.keys, keys[match], atol=1e-5)
    assert torch.is_grad_enabled()  # the refill's no-grad mode ended with it


def test_neighbour_refresh_fills_the_table_in_order_from_a_stream_of_pairs():
    from msvae.models.stage2 import NeighbourCentre

    centre = NeighbourCentre(w_dim=2, channels=1, size=10, neighbours=3)
    images, codes = toy_images(12), torch.randn(12, 2)
    centre.learn(images[:7], codes[:7] + 5, None)  # old ring contents, to be replaced
    centre.refresh(iter([(images[i:i + 4], codes[i:i + 4]) for i in range(0, 12, 4)]))
    assert int(centre.filled) == 10 and torch.equal(centre.values, codes[:10])
    assert torch.equal(centre.keys, centre._key(images[:10]))
