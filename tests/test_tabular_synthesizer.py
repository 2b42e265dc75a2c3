"""msvae.TabularSynthesizer and its parts at test size."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pd = pytest.importorskip("pandas")

from msvae import TabularSynthesizer  # noqa: E402
from msvae.data.tabular import Span  # noqa: E402
from msvae.models.networks import reparameterize  # noqa: E402
from msvae.models import (MixedLikelihood, TabularFlowStage2, TabularMixtureStage2,  # noqa: E402
                          TabularVAEStage2)


def small_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    return pd.DataFrame({
        "amount": np.exp(x + 3).round(2),
        "count": rng.poisson(3, n),
        "group": np.where(x > 0, "high", "low"),
        "tag": np.where(rng.random(n) < 0.2, None, rng.choice(["p", "q", "r"], n)),
        "score": np.where(rng.random(n) < 0.1, np.nan, x + rng.normal(0, 0.3, n)),
    })


SPANS = [Span("a", "scalar", 0, 1), Span("b", "softmax", 1, 3), Span("c", "binary", 4, 1)]


def test_mixed_likelihood_is_the_sum_of_its_parts():
    likelihood = MixedLikelihood(SPANS)
    x = torch.tensor([[0.3, 0.0, 1.0, 0.0, 1.0]])
    output = torch.tensor([[0.1, 2.0, -1.0, 0.5, 0.7]])
    sigma = 0.1
    expected = (0.5 * ((0.3 - 0.1) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)
                - torch.log_softmax(torch.tensor([2.0, -1.0, 0.5]), 0)[1].item()
                + torch.nn.functional.softplus(torch.tensor(-0.7)).item())
    assert likelihood(x, output).item() == pytest.approx(expected, rel=1e-5)
    draws = likelihood.sample(output.repeat(2000, 1))
    assert torch.all(draws[:, 1:4].sum(1) == 1) and set(draws[:, 4].tolist()) <= {0.0, 1.0}
    assert draws[:, 4].mean().item() == pytest.approx(torch.sigmoid(torch.tensor(0.7)).item(), abs=0.04)
    assert draws[:, 2].mean().item() == pytest.approx(torch.softmax(output[0, 1:4], 0)[1].item(), abs=0.03)


def test_mixed_likelihood_scores_blocks_of_every_width_as_one_categorical_each():
    """The padded one-pass log-softmax equals a categorical per block, values and gradients."""
    spans = [Span("a", "softmax", 0, 3), Span("b", "scalar", 3, 1), Span("c", "softmax", 4, 1),
             Span("d", "softmax", 5, 5), Span("e", "binary", 10, 1)]
    likelihood = MixedLikelihood(spans).double()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(6, 11, dtype=torch.float64)
    for start, size in ((0, 3), (4, 1), (5, 5)):
        x[torch.arange(6), start + torch.randint(size, (6,), generator=g)] = 1.0
    x[:, 3], x[:, 10] = torch.randn(6, generator=g, dtype=torch.float64), 1.0
    output = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    expected = sum(-(x[:, a:a + n] * output[:, a:a + n].log_softmax(1)).sum(1) for a, n in ((0, 3), (4, 1), (5, 5)))
    expected = expected + F.binary_cross_entropy_with_logits(output[:, 10], x[:, 10], reduction="none")
    expected = expected + 0.5 * ((x[:, 3] - output[:, 3]) / 0.1) ** 2 + np.log(0.1) + 0.5 * np.log(2 * np.pi)
    got = likelihood(x, output)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), output)[0],
                               torch.autograd.grad(expected.sum(), output)[0])


def test_a_certain_scalar_is_not_scored_so_the_bound_stays_bounded():
    """A scalar fixed by its row's point mode (or missingness) has probability 1 given it: neither
    stage 1 nor the flow may gain density on it, however small its scale."""
    spans = [Span("a", "scalar", 0, 1, (2,)), Span("m", "softmax", 1, 2)]  # mode 1 (feature 2) is a point
    likelihood = MixedLikelihood(spans)
    x = torch.tensor([[0.0, 0.0, 1.0], [0.3, 1.0, 0.0]])  # row 0 at the point, row 1 in the smooth mode
    output = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    categorical = np.log(2.0)
    for log_scale in (-1.0, -4.0):
        with torch.no_grad():
            likelihood.log_scale.fill_(log_scale)
        nll = likelihood(x, output)
        assert nll[0].item() == pytest.approx(categorical, abs=1e-6)  # only the mode is scored
        sigma = max(np.exp(log_scale), 0.01)
        expected = 0.5 * (0.2 / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi) + categorical
        assert nll[1].item() == pytest.approx(expected, rel=1e-5)
    stage2 = TabularFlowStage2(spans, layers=2, hidden=8)
    stage2.likelihood.load_state_dict(likelihood.state_dict())
    torch.manual_seed(0)  # the auxiliary draw at the point is paid for exactly: the untrained flow is stage 1
    torch.testing.assert_close(stage2.log_prob(x, output), -likelihood(x, output), atol=1e-5, rtol=1e-5)


def test_transformer_spans_name_what_fixes_each_scalar():
    from msvae.data.tabular import TabularTransformer
    frame = pd.DataFrame({"gain": [0.0] * 60 + list(np.linspace(1, 50, 40)),
                          "age": np.where(np.arange(100) % 10 == 0, np.nan, np.arange(100.0))})
    transformer = TabularTransformer(seed=0).fit(frame)
    gain, gain_modes, age, age_modes, age_missing = transformer.spans
    point = [i for i, std in enumerate(transformer.columns[0].stds) if std == 0]
    assert point and gain.fixed_by == tuple(gain_modes.start + i for i in point)
    assert age.fixed_by == (age_missing.start,) and age_missing.kind == "binary"
    likelihood = MixedLikelihood(transformer.spans)
    x = torch.as_tensor(transformer.transform(frame))
    free = likelihood.free(x)
    assert torch.equal(free[:, 0] == 0, torch.as_tensor(frame["gain"].to_numpy() == 0))
    assert torch.equal(free[:, 1] == 0, torch.as_tensor(frame["age"].isna().to_numpy()))
    assert TabularTransformer.from_state(transformer.state_dict()).spans == transformer.spans


def test_mixture_stage2_dequantises_certain_scalars_and_decodes_each_block_by_its_largest_entry():
    spans = [Span("a", "scalar", 0, 1, (3,)), Span("m", "softmax", 1, 3), Span("c", "binary", 4, 1)]
    model = TabularMixtureStage2(spans)  # a's value is certain where m's last entry (feature 3) is on
    x = torch.tensor([[0.3, 1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    y = model.dequantize(x)
    assert torch.all((y[:, 1:] >= x[:, 1:]) & (y[:, 1:] < x[:, 1:] + 1)) and y[0, 0] == x[0, 0]
    assert 0.0 <= y[1, 0] < 1.0  # the certain value is dequantised: no density on a point
    moved = x.clone()
    moved[1, 0] = 5.0  # what a certain scalar holds does not reach the bound
    torch.manual_seed(0)
    torch.testing.assert_close(model.dequantize(moved), y)
    torch.testing.assert_close(model.quantize(y), x)
    # blocks decode by their largest entry, not by rounding each entry: b, then c (certain a: 0)
    y = torch.tensor([[0.5, 0.2, 0.9, 0.1, 1.3], [0.5, 0.1, 0.3, 0.8, 0.4]])
    torch.testing.assert_close(model.quantize(y), torch.tensor([[0.5, 0.0, 1.0, 0.0, 1.0],
                                                                [0.0, 0.0, 0.0, 1.0, 0.0]]))
    context = torch.randn(2, 5)
    total, terms = model.training_loss(x, context, context, 0)
    assert torch.isfinite(total) and set(terms) == {"loss"}


def test_mixed_likelihood_samples_blocks_of_every_width_at_their_probabilities():
    spans = [Span("a", "softmax", 0, 3), Span("c", "softmax", 3, 1), Span("d", "softmax", 4, 5)]
    likelihood = MixedLikelihood(spans)
    output = torch.tensor([[0.5, -1.0, 1.5, 3.0, 0.0, 1.0, -2.0, 0.5, 2.0]])
    torch.manual_seed(0)
    draws = likelihood.sample(output.repeat(20000, 1))
    for start, size in ((0, 3), (3, 1), (4, 5)):
        block = draws[:, start:start + size]
        assert torch.all(block.sum(1) == 1)
        torch.testing.assert_close(block.mean(0), output[0, start:start + size].softmax(0), atol=0.012, rtol=0)


FLOW_SPANS = [Span("a", "scalar", 0, 1, (3,)), Span("m", "softmax", 1, 3), Span("b", "scalar", 4, 1, (5,)),
              Span("c", "binary", 5, 1), Span("d", "softmax", 6, 4)]  # a: a point mode at 3; b: missing at 5


def test_untrained_flow_stage2_is_stage1_in_likelihood_and_samples_and_inverts_exactly():
    torch.manual_seed(0)
    stage2 = TabularFlowStage2(FLOW_SPANS, layers=3, hidden=16)
    likelihood = MixedLikelihood(FLOW_SPANS)
    with torch.no_grad():
        likelihood.log_scale.copy_(torch.tensor([-1.0, -3.0]))
    stage2.likelihood.load_state_dict(likelihood.state_dict())
    x1 = 3 * torch.randn(64, 10)
    x = likelihood.sample(x1)
    # one-hot and 0/1 atoms are exact probabilities under any dequantisation draw: no gap
    torch.testing.assert_close(stage2.log_prob(x, x1), -likelihood(x, x1), atol=1e-4, rtol=1e-5)
    certain = likelihood.free(x) == 0  # scalars whose rows' point mode or missingness fix them
    assert certain[:, 0].any() and certain[:, 1].any() and not certain.all()
    canonical = x.clone()
    canonical[:, [0, 4]] = torch.where(certain, x1[:, [0, 4]], x[:, [0, 4]])  # encode puts them at x1's
    torch.testing.assert_close(stage2.generate(x1, x1, stage2.encode(x, x1, x1)), canonical)
    assert stage2.w_dim == 5
    n = 20_000  # samples given one x1: stage 1's marginals
    context = x1[:1].expand(n, -1)
    draws = stage2.generate(context, context, stage2.sample_w(n))
    expected = likelihood.sample(context)
    torch.testing.assert_close(draws[:, [1, 2, 3, 5, 6, 7, 8, 9]].mean(0), expected[:, [1, 2, 3, 5, 6, 7, 8, 9]].mean(0),
                               atol=0.02, rtol=0)
    torch.testing.assert_close(draws[:, [0, 4]].std(0), likelihood.scale(), atol=0.01, rtol=0.02)
    assert torch.all(draws[:, 1:4].sum(1) == 1) and torch.all(draws[:, 6:].sum(1) == 1)


def test_flow_stage2_learns_the_dependence_stage1_leaves_out():
    """Two columns that copy each other given a constant x1: stage 1 sees two independent coins
    (2 log 2 nats), the flow learns the pair (log 2)."""
    torch.manual_seed(0)
    spans = [Span("u", "softmax", 0, 2), Span("v", "softmax", 2, 2)]
    stage2 = TabularFlowStage2(spans, layers=2, hidden=32)
    k = torch.randint(0, 2, (512,))
    x = torch.cat([F.one_hot(k, 2), F.one_hot(k, 2)], 1).float()
    x1 = torch.zeros(512, 4)
    before = -stage2.log_prob(x, x1).mean().item()
    optimizer = torch.optim.Adam(stage2.parameters(), lr=3e-3)
    for _ in range(300):
        loss = -stage2.log_prob(x, x1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = -stage2.log_prob(x, x1).mean().item()
    assert before == pytest.approx(2 * np.log(2), abs=1e-4)
    assert after < 1.3 * np.log(2), (before, after)
    with torch.no_grad():
        draws = stage2.generate(x1, x1, stage2.sample_w(512))
    assert (draws[:, :2].argmax(1) == draws[:, 2:].argmax(1)).float().mean() > 0.85


def test_untrained_vae_stage2_is_stage1s_likelihood():
    stage2 = TabularVAEStage2(SPANS, w_dim=3, hidden=8, free_bits=0.5, kl_warmup=10)
    x1 = torch.randn(4, 5)
    torch.testing.assert_close(stage2.output(x1, torch.randn(4, 3)), x1)
    x = torch.tensor([[0.3, 0.0, 1.0, 0.0, 1.0]]).repeat(4, 1)
    total, terms = stage2.training_loss(x, x1, x1, step=0)
    torch.testing.assert_close(total, terms["recon"])  # KL weight 0 at the first step
    torch.testing.assert_close(terms["recon"], stage2.likelihood(x, x1).mean())
    assert float(terms["kl"].detach()) == 0.0  # q(w | x, x1) starts as the prior
    total, terms = stage2.training_loss(x, x1, x1, step=5)  # weight 0.5 on a floor of 0.25 nats a dimension
    torch.testing.assert_close(total, terms["recon"] + 0.5 * 3 * 0.25)
    total, terms = stage2.training_loss(x, x1, x1, step=10)  # then w is paid in full: no floor
    torch.testing.assert_close(total, terms["recon"] + terms["kl"])


@pytest.mark.parametrize("stage2", ["vae", "flow", "mog", None])
def test_fit_sample_save_load(tmp_path, stage2):
    df = small_frame()
    synthesizer = TabularSynthesizer(latent_dim=3, stage2=stage2, hidden=(32, 32), epochs=2,
                                     stage2_epochs=2, min_steps=1, batch_size=100, progress=False,
                                     stage2_options={"hidden": 32})
    synthesizer.fit(df, discrete_columns=["count"])
    rows = synthesizer.sample(500, seed=1)
    assert list(rows.columns) == list(df.columns) and len(rows) == 500
    assert rows["amount"].min() >= df["amount"].min() and rows["amount"].max() <= df["amount"].max()
    assert set(rows["group"]) <= {"high", "low"} and set(rows["count"]) <= set(df["count"])
    assert rows["count"].dtype == df["count"].dtype
    pd.testing.assert_frame_equal(rows, synthesizer.sample(500, seed=1))  # seeded
    state = torch.get_rng_state()
    synthesizer.sample(5, seed=2)
    assert torch.equal(state, torch.get_rng_state())  # a seeded draw leaves the global RNG alone
    fresh = [synthesizer.sample(50) for _ in range(2)]  # unseeded: new rows on every call
    assert not fresh[0].equals(fresh[1])
    fixed = synthesizer.sample(50, fixed={0: 2.0}, stage="stage1")
    assert len(fixed) == 50
    assert synthesizer.encode(df).shape == (len(df), 3)
    synthesizer.save(tmp_path / "s.pt")
    loaded = TabularSynthesizer.load(tmp_path / "s.pt")
    pd.testing.assert_frame_equal(loaded.sample(200, seed=4), synthesizer.sample(200, seed=4))
    assert len(loaded.stage1.history) == 2


def test_each_stage_ends_at_its_best_held_out_bound():
    """Model selection: every stage's held-out bound is checked; the fitted model is the one at the
    best check (its bound on the held-out rows is that check's), and a stage that keeps getting
    worse stops after `patience` checks."""
    df = small_frame(400)
    synthesizer = TabularSynthesizer(latent_dim=2, hidden=(32, 32), epochs=60, stage2_epochs=60,
                                     min_steps=1, batch_size=60, lr=3e-3, patience=3, validation=0.2,
                                     progress=False, stage2_options={"hidden": 32}).fit(df)
    _, held_out = synthesizer._split(torch.as_tensor(synthesizer.transformer.transform(df)))
    assert len(held_out) == 80
    bounds = {"full": synthesizer._bounds(held_out, seed=0)["full"]}  # stage 2 trains after the prior's fit
    prior, synthesizer.prior = synthesizer.prior, None  # stage 1 is selected under N(0, I)
    bounds["stage1"] = synthesizer._bounds(held_out, seed=0)["stage1"]
    synthesizer.prior = prior
    calibration = synthesizer.selection["calibration"]  # after stage 1's selection, before the prior
    assert calibration["before"] == pytest.approx(synthesizer.selection["stage1"]["best"], rel=1e-5)
    assert bounds["stage1"] == pytest.approx(min(calibration["before"], calibration["after"]), rel=1e-5)
    assert calibration["kept"] == (calibration["after"] < calibration["before"])
    for stage, key in (("stage1", "stage1"), ("stage2", "full")):
        selection = synthesizer.selection[stage]
        scores = [score for _, score in selection["checks"]]
        assert len(scores) >= 2 and selection["best"] == min(scores)
        if key == "full":
            assert bounds[key] == pytest.approx(selection["best"], rel=1e-5), stage
        last = selection["checks"][-1][0]
        if selection["stopped"]:  # stopped `patience` checks after the best
            assert sum(step > selection["best_step"] for step, _ in selection["checks"]) == 3
        else:
            assert last == 60 * 6
    assert synthesizer.selection["stage2"]["best"] < synthesizer.selection["stage1"]["best"]


def test_fitted_prior_is_chosen_per_dimension_by_the_held_out_bound():
    """The aggregate prior is fitted to the training rows' posteriors; per dimension the held-out
    codes choose N(0, 1) or a kernel width, so the held-out bound is at most N(0, I)'s (the same
    draw, both estimated as log q - log p) and sampling draws from it. prior="standard": N(0, I)."""
    from msvae.priors import FactorizedAggregatePosterior

    df = small_frame(400)
    options = dict(latent_dim=3, hidden=(32, 32), epochs=30, stage2_epochs=5, min_steps=1,
                   batch_size=100, lr=3e-3, validation=0.2, progress=False, stage2_options={"hidden": 32})
    synthesizer = TabularSynthesizer(**options).fit(df)
    prior = synthesizer.prior
    assert isinstance(prior, FactorizedAggregatePosterior) and prior.num_components == 320
    choice = synthesizer.selection["prior"]["bandwidth"]
    assert len(choice) == 3 and choice != ["standard"] * 3  # some factor was fitted, not N(0, 1)
    _, held_out = synthesizer._split(torch.as_tensor(synthesizer.transformer.transform(df)))
    fitted = synthesizer._bounds(held_out, seed=0)
    synthesizer.prior = FactorizedAggregatePosterior(torch.zeros_like(prior.loc), torch.zeros_like(prior.loc))
    standard = synthesizer._bounds(held_out, seed=0)
    assert fitted["stage1"] < standard["stage1"] and fitted["full"] < standard["full"]
    # float32 bounds of ~10 nats: their difference is good to ~1e-5 nats
    gain = standard["stage1"] - fitted["stage1"]
    assert synthesizer.selection["prior"]["gain"] == pytest.approx(gain, abs=1e-5)
    synthesizer.prior = prior
    torch.manual_seed(0)
    codes = synthesizer._codes((20000,))
    torch.testing.assert_close(codes.var(0), prior.variance, rtol=0.08, atol=0.0)
    plain = TabularSynthesizer(**options, prior="standard").fit(df)
    assert plain.prior is None and "prior" not in plain.selection


def test_stage1_penalties_are_chosen_by_the_held_out_bound():
    """Each (beta, gamma) candidate trains stage 1 from the same initialisation; the one with the
    best held-out bound is kept, and the result is the fit with that candidate alone."""
    df = small_frame(300)
    options = dict(latent_dim=2, hidden=(32, 32), epochs=20, stage2_epochs=3, min_steps=1,
                   batch_size=100, lr=3e-3, validation=0.2, progress=False, stage2_options={"hidden": 16})
    both = TabularSynthesizer(**options, penalties=[(0.0, 0.0), (6.0, 6.0)]).fit(df)
    record = both.selection["penalties"]
    assert record["candidates"] == [[0.0, 0.0], [6.0, 6.0]] and len(set(record["bounds"])) == 2
    best = min(range(2), key=lambda i: record["bounds"][i])
    assert record["chosen"] == record["candidates"][best]
    assert both.selection["stage1"]["best"] == min(record["bounds"])
    alone = TabularSynthesizer(**options, penalties=[record["chosen"]]).fit(df)
    assert alone.selection["penalties"]["candidates"] == [record["chosen"]]
    for a, b in zip(both.stage1.state_dict().values(), alone.stage1.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    pd.testing.assert_frame_equal(both.sample(100, seed=0), alone.sample(100, seed=0))


def test_default_penalties_are_one_fit_at_2_1():
    df = small_frame(200)
    options = dict(latent_dim=2, hidden=(16, 16), epochs=2, stage2=None, min_steps=1, batch_size=50,
                   validation=0.2, progress=False)
    record = TabularSynthesizer(**options).fit(df).selection["penalties"]
    assert record["candidates"] == [[2.0, 1.0]] and len(record["bounds"]) == 1


def test_default_numeric_column_is_one_quantile_score_with_its_point_masses():
    """continuous="quantile" (the default): a numeric column is one standard-normal score (its
    missingness one 0/1 entry more); a column with point masses (values held by 5 % of the rows
    and 10 rows) adds a one-hot block, one entry per point and one for the rest, and its score is
    fixed by the points' entries; "mode" still gives a mode block beside the offset."""
    df = small_frame(200)
    options = dict(latent_dim=2, hidden=(16, 16), epochs=1, stage2_epochs=1, min_steps=1, progress=False)
    synthesizer = TabularSynthesizer(**options).fit(df, discrete_columns=["group", "tag"])
    spans = {}
    for span in synthesizer.transformer.spans:
        spans.setdefault(span.column, []).append(span)
    assert [(s.kind, s.size) for s in spans["amount"]] == [("scalar", 1)]  # distinct values: no point
    assert [(s.kind, s.size) for s in spans["score"]] == [("scalar", 1), ("binary", 1)]  # missingness
    counts = df["count"].value_counts()
    points = sorted(counts.index[(counts >= 0.05 * len(df)) & (counts >= 10)])
    score, block = spans["count"]
    assert (block.kind, block.size) == ("softmax", len(points) + 1) and len(points) >= 3
    assert score.fixed_by == tuple(range(block.start, block.start + len(points)))
    x = synthesizer.transformer.transform(df)
    at_point = df["count"].isin(points).to_numpy()
    assert (x[at_point, score.start] == 0).all() and (x[~at_point, block.start + len(points)] == 1).all()
    back = synthesizer.transformer.inverse_transform(x)
    assert (back["count"].to_numpy() == df["count"].to_numpy()).all()
    sampled = synthesizer.sample(500, seed=0)["count"]
    assert sampled.isin(points).mean() > 0.5  # drawn points decode to exactly the point
    mode = TabularSynthesizer(**options, continuous="mode").fit(df, discrete_columns=["group", "tag"])
    assert any(span.kind == "softmax" for span in mode.transformer.spans if span.column == "amount")


def test_default_width_and_lr_follow_whether_the_table_is_one_batch(tmp_path):
    """hidden=None, lr=None: 128 wide at 3e-3 when the training rows are one batch, else 256 at
    1e-3; a loaded model has the width it was fitted with."""
    df = small_frame(200)  # 160 training rows
    options = dict(latent_dim=2, epochs=1, stage2=None, min_steps=1, validation=0.2, progress=False)
    for batch_size, hidden, lr in ((160, [128, 128], 3e-3), (159, [256, 256], 1e-3)):
        synthesizer = TabularSynthesizer(**options, batch_size=batch_size).fit(df)
        assert synthesizer.settings == {"hidden": hidden, "lr": lr}
        assert synthesizer.stage1.encoder.net[0].out_features == hidden[0]
    synthesizer.save(tmp_path / "model.pt")
    loaded = TabularSynthesizer.load(tmp_path / "model.pt")
    assert loaded.settings == synthesizer.settings
    pd.testing.assert_frame_equal(loaded.sample(50, seed=1), synthesizer.sample(50, seed=1))


def test_interrupted_fit_resumes(tmp_path):
    df = small_frame(200)
    options = dict(latent_dim=2, hidden=(16, 16), batch_size=50, min_steps=1, progress=False,
                   stage2_options={"hidden": 16})
    straight = TabularSynthesizer(epochs=3, stage2_epochs=3, **options).fit(df)
    TabularSynthesizer(epochs=3, stage2_epochs=1, **options).fit(df, checkpoint_dir=tmp_path)
    resumed = TabularSynthesizer(epochs=3, stage2_epochs=3, **options).fit(df, checkpoint_dir=tmp_path)
    assert [h["step"] for h in resumed.stage2.history] == [4, 8, 12]
    pd.testing.assert_frame_equal(resumed.sample(100, seed=0), straight.sample(100, seed=0))


def test_missing_values_come_back_at_their_rate():
    df = small_frame(600)
    synthesizer = TabularSynthesizer(latent_dim=2, stage2=None, hidden=(32, 32), epochs=40,
                                     min_steps=1, batch_size=100, lr=1e-2, progress=False).fit(df)
    rows = synthesizer.sample(3000)
    assert rows["score"].isna().mean() == pytest.approx(df["score"].isna().mean(), abs=0.04)
    assert rows["tag"].isna().mean() == pytest.approx(df["tag"].isna().mean(), abs=0.05)


def test_synthesizer_rejects_bad_use():
    with pytest.raises(ValueError, match="stage2 must be one of"):
        TabularSynthesizer(stage2="gan")
    for option, value in (("epochs", -1), ("stage2_epochs", 0), ("batch_size", 0), ("latent_dim", 1.5),
                          ("lr", 0.0), ("lr", float("nan")), ("penalties", ()), ("penalties", [(1.0,)]),
                          ("min_steps", 0),
                          ("patience", 0), ("validation", 1.0), ("validation", -0.1),
                          ("prior", "uniform")):
        with pytest.raises(ValueError, match=option):
            TabularSynthesizer(**{option: value})
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        TabularSynthesizer(penalties=[(2.0, 1.0), (1.0, -1.0)])
    synthesizer = TabularSynthesizer(latent_dim=2, hidden=(8,), epochs=1, stage2_epochs=1,
                                     min_steps=1, progress=False)
    with pytest.raises(ValueError, match="not fitted"):
        synthesizer.sample(3)
    with pytest.raises(ValueError, match="df is empty"):
        synthesizer.fit(pd.DataFrame())
    with pytest.raises(ValueError, match="too few to hold out"):
        TabularSynthesizer(validation=0.5, progress=False).fit(small_frame(3))
    synthesizer.fit(small_frame(50))
    with pytest.raises(ValueError, match="n must be a positive int"):
        synthesizer.sample(0)
    with pytest.raises(ValueError, match=r"fixed factors must be in \[0, 2\)"):
        synthesizer.sample(3, fixed={5: 1.0})


def test_calibration_sets_decoded_frequencies_to_the_datas_and_keeps_only_a_better_bound():
    """After its selection, stage 1's output biases and scales are refitted with the rest fixed: at
    the refit's posterior draws the mean decoded probability of every category and 0/1 entry is
    then the training rows' frequency (the bound is stationary in the biases), which an
    undertrained stage 1 is far from; the refit is kept only where the held-out bound improves."""
    df = small_frame(400)
    synthesizer = TabularSynthesizer(latent_dim=2, hidden=(32, 32), epochs=3, min_steps=1, stage2=None,
                                     batch_size=100, validation=0.2, progress=False).fit(df)
    calibration = synthesizer.selection["calibration"]
    assert calibration["kept"] and calibration["after"] < calibration["before"]
    data, _ = synthesizer._split(torch.as_tensor(synthesizer.transformer.transform(df)))
    stage1, likelihood = synthesizer.stage1, synthesizer.likelihood
    with torch.random.fork_rng(), torch.no_grad():  # the refit's draws
        torch.manual_seed(0)
        x = data[torch.randperm(len(data))]
        mu, logvar = stage1.encoder(x)
        outputs = [stage1.decoder(reparameterize(mu, logvar)) for _ in range(2)]
    blocks = [(start, size) for start, size in likelihood.softmax_blocks]
    assert blocks
    for start, size in blocks:
        decoded = sum(o[:, start:start + size].softmax(-1).mean(0) for o in outputs) / 2
        assert torch.allclose(decoded, x[:, start:start + size].mean(0), atol=2e-3)
    for index in likelihood.binary.tolist():
        decoded = sum(torch.sigmoid(o[:, index]).mean() for o in outputs) / 2
        assert abs(float(decoded - x[:, index].mean())) < 2e-3
