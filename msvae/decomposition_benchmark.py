"""Mathieu et al. (2019)'s claims for the decomposition objective, reproduced offline: three
experiments, each two arms (the isotropic prior against a structured one, everything else equal)
over several seeds.

- ``anisotropic`` (dSprites, conv stage 1): an anisotropic Gaussian prior breaks the isotropic
  prior's rotation invariance -> higher MIG at equal beta, reconstruction about the same.
- ``sparse`` (scikit-learn's 8x8 digits, MLP stage 1): a spike-and-slab prior with the
  per-dimension MMD -> sparser codes (Hoyer sparsity of the posterior means).
- ``clusters`` (digits): a learned Gaussian-mixture prior with the divergence term -> codes that
  cluster by digit class (NMI / ARI of a 10-means clustering against the labels).

``run(out, ...)`` appends one line to ``out/runs.jsonl`` per finished (experiment, arm, seed) and
skips those already there (runs of other settings are refused); an interrupted dSprites run resumes
from its checkpoint under ``out/checkpoints``. ``summarise(out)`` writes ``summary.json``,
``summary.md`` (mean ± std over seeds, and whether the claimed effect exceeds one standard
deviation) and one figure per experiment (``<experiment>.png``). With ``stage2_steps`` the
runs also train a VAE stage 2 on their stage 1 (dSprites: the quick preset's; digits: the
tabular VAE stage 2 with one Bernoulli per pixel) and report the full model's reconstruction
(``full_recon``; its ``z``, hence every code metric, is stage 1's).

    python bench/bench_decomposition.py --out bench/results/decomposition_cpu --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from msvae import cli, metrics
from msvae.data import DSprites
from msvae.data import digits
from msvae.losses import reconstruction_nll
from msvae.methods import METHOD_OPTIONS, stage1_loss
from msvae.evaluation import encode_images
from msvae.models import DisentangledVAE, MultiStageModel
from msvae.models.stage2 import build_stage2
from msvae.models.tabular import TabularVAEStage2
from msvae.data.tabular import Span
from msvae.priors import as_distribution


@dataclass(frozen=True)
class Experiment:
    data: str  # "dsprites" or "digits"
    claim: str  # the metric the structured prior should raise
    arms: dict  # arm name -> prior options; the first arm is the isotropic baseline
    options: dict  # decomposition options shared by both arms
    latent_dim: int
    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 0
    metrics: tuple = field(default=("recon",))


# Settings: the divergence weights were chosen on pilot runs with seed 100 (not a reported seed).
# dSprites at beta = 1: with beta = 4 (weight ramped over 500 steps) both priors' models sat on the
# mean-image plateau (KL 0.005 nats) through step 1,463 of 2,000 in the first attempt.
# Each structured prior is run without (alpha = 0) and with the divergence term, each beside its
# isotropic twin (the same objective), so the prior's effect and the divergence's are told apart.
EXPERIMENTS = {
    "anisotropic": Experiment(
        data="dsprites", claim="mig", arms={"isotropic": {"prior": "isotropic"},
                                            "anisotropic": {"prior": "anisotropic", "anisotropy": 5.0}},
        options=dict(beta=1.0), latent_dim=10, steps=2000, batch_size=64, warmup=500,
        metrics=("mig", "factor_vae_score", "recon")),
    "sparse": Experiment(
        data="digits", claim="hoyer",
        arms={"isotropic": {"prior": "isotropic"}, "spikeslab": {"prior": "spikeslab"},
              "isotropic+mmd": {"prior": "isotropic", "alpha": 100.0, "divergence": "mmd_dim"},
              "spikeslab+mmd": {"prior": "spikeslab", "alpha": 100.0, "divergence": "mmd_dim"}},
        options=dict(beta=1.0), latent_dim=16, steps=3000, batch_size=128, metrics=("hoyer", "recon")),
    "clusters": Experiment(
        data="digits", claim="cluster_nmi",
        arms={"isotropic": {"prior": "isotropic"}, "mixture": {"prior": "mixture", "prior_components": 10},
              "isotropic+kl": {"prior": "isotropic", "alpha": 10.0, "divergence": "inclusive_kl"},
              "mixture+kl": {"prior": "mixture", "prior_components": 10, "alpha": 10.0,
                             "divergence": "inclusive_kl"}},
        options=dict(beta=1.0), latent_dim=10, steps=3000, batch_size=128,
        metrics=("cluster_nmi", "cluster_ari", "recon")),
}
LABELS = {"mig": "MIG", "factor_vae_score": "FactorVAE score", "recon": "reconstruction BCE (nats / image)",
          "hoyer": "Hoyer sparsity", "cluster_nmi": "NMI of 10-means vs labels",
          "cluster_ari": "ARI of 10-means vs labels", "full_recon": "full model BCE (nats / image)",
          "mixture_nmi": "NMI of mixture components vs labels"}
DSPRITES_EVAL = 5000  # held-out dSprites images scored per run


def _experiment(name: str, steps: int | None) -> Experiment:
    """The experiment ``name``, with its stage-1 ``steps`` replaced when given."""
    return EXPERIMENTS[name] if steps is None else replace(EXPERIMENTS[name], steps=steps)


def _settings(name: str, stage2_steps: int, steps: int | None) -> dict:
    experiment = _experiment(name, steps)
    settings = {**asdict(experiment), "stage2_steps": stage2_steps}
    return json.loads(json.dumps(settings))  # as runs.jsonl holds them (tuples as lists)


def _done(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _dsprites_scores(model, dataset: DSprites, indices: np.ndarray) -> tuple[dict, np.ndarray]:
    """Scores of a stage 1 (or a multi-stage model: also its full reconstruction) on ``indices``;
    reconstruction errors as ``msvae fit`` reports them (``evaluation.encode_images``)."""
    encoded = encode_images(model, dataset.images, indices)
    codes, factors = encoded["mu"].numpy(), dataset.factors(indices)
    scores = {"mig": metrics.mig(codes, factors), "factor_vae_score": metrics.factor_vae_score(codes, factors, seed=0),
              "recon": float(encoded["bce"].mean())}
    if "full_bce" in encoded:
        scores["full_recon"] = float(encoded["full_bce"].mean())
    return scores, codes


@torch.no_grad()
def _digits_scores(model: DisentangledVAE, loss, x: torch.Tensor, labels: np.ndarray) -> tuple[dict, np.ndarray]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    mu, _ = model.encode_posterior(x)
    codes = mu.numpy()
    assignment = KMeans(10, n_init=10, random_state=0).fit_predict(codes)
    scores = {"recon": float(reconstruction_nll(x, model.decoder(mu), "bernoulli").mean()),
              "hoyer": metrics.hoyer_sparsity(codes),
              "cluster_nmi": float(normalized_mutual_info_score(labels, assignment)),
              "cluster_ari": float(adjusted_rand_score(labels, assignment))}
    prior = as_distribution(loss.prior)
    if hasattr(prior, "log_weights"):  # a mixture: assign each code to its most probable component
        log_joint = prior.log_weights + torch.distributions.Normal(prior.loc, prior.scale).log_prob(
            mu[:, None, :]).sum(-1)
        scores["mixture_nmi"] = float(normalized_mutual_info_score(labels, log_joint.argmax(1).numpy()))
    return scores, codes


def run_one(name: str, arm: str, seed: int, out: Path, stage2_steps: int = 0, steps: int | None = None,
            progress: bool = True) -> dict:
    """Trains and scores one (experiment, arm, seed) (``steps`` replaces the experiment's); returns its row."""
    experiment = _experiment(name, steps)
    options = {**experiment.options, **experiment.arms[arm]}
    start = time.perf_counter()
    torch.manual_seed(seed)
    if experiment.data == "dsprites":
        dataset = DSprites()
        train_idx, test_idx = DSprites.split(0.1, seed=0)  # one split: the seeds vary the training only
        eval_idx = np.random.default_rng(0).choice(test_idx, DSPRITES_EVAL, replace=False)
        model = DisentangledVAE.for_images(experiment.latent_dim)
        train = Subset(dataset, train_idx.tolist())
        loss = stage1_loss("decomposition", latent_dim=experiment.latent_dim, dataset_size=len(train_idx),
                           **options)
        folder = out / "checkpoints" / f"{name}_{arm}_{seed}"
        model.fit(train, loss=loss, steps=experiment.steps, batch_size=experiment.batch_size,
                  lr=experiment.lr, penalty_warmup=experiment.warmup, checkpoint_dir=folder,
                  progress=progress, seed=seed)
        if stage2_steps:
            model = MultiStageModel(model, build_stage2(dict(kind="vae", **cli.stage2_options(cli.PRESETS["quick"]))))
            model.eval()
            model.stage2.fit(model.stage1, train, steps=stage2_steps, batch_size=experiment.batch_size,
                             lr=experiment.lr, checkpoint_dir=folder, progress=progress, seed=seed)
        scores, codes = _dsprites_scores(model, dataset, eval_idx)
    else:
        x, labels = digits.load_digits()
        train_idx, test_idx = digits.split(labels, 0.2, seed=0)
        model = DisentangledVAE.for_vectors(64, experiment.latent_dim, likelihood="bernoulli")
        loss = stage1_loss("decomposition", latent_dim=experiment.latent_dim, dataset_size=len(train_idx),
                           **options)
        model.fit(x[train_idx], loss=loss, steps=experiment.steps, batch_size=experiment.batch_size,
                  lr=experiment.lr, penalty_warmup=experiment.warmup, progress=progress, seed=seed)
        scores, codes = _digits_scores(model, loss, x[test_idx], labels[test_idx])
        if stage2_steps:  # the tabular VAE stage 2, one Bernoulli per pixel, refining stage 1's logits
            second = TabularVAEStage2([Span(f"pixel{i}", "binary", i, 1) for i in range(64)], w_dim=8)
            second.fit(model, x[train_idx], steps=stage2_steps, batch_size=experiment.batch_size,
                       lr=experiment.lr, progress=progress, seed=seed)
            with torch.no_grad():
                x_test = x[test_idx]
                x1 = model.decoder(model.encode(x_test))
                w = second.encode(x_test, x1, model.mean_output(x1))
                scores["full_recon"] = float(second.likelihood(x_test, second.output(x1, w)).mean())
        codes_path = out / "codes"
        codes_path.mkdir(exist_ok=True)
        np.savez_compressed(codes_path / f"{name}_{arm}_{seed}.npz", codes=codes, labels=labels[test_idx])
    return {"experiment": name, "arm": arm, "seed": seed, "settings": _settings(name, stage2_steps, steps),
            "scores": scores, "seconds": time.perf_counter() - start}


def run(out, experiments=tuple(EXPERIMENTS), seeds=(0, 1, 2), stage2_steps: int = 0,
        steps: int | None = None, progress: bool = True) -> list[dict]:
    """Every (experiment, arm, seed) not yet in ``out/runs.jsonl`` (``steps``: every experiment's
    stage-1 steps instead of its own, e.g. for a smoke test); then ``summarise(out)``."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"experiments must be among {tuple(EXPERIMENTS)}, got {list(experiments)}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative ints, got {list(seeds)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    for row in done:
        if row["experiment"] in experiments and row["settings"] != _settings(row["experiment"], stage2_steps, steps):
            raise ValueError(f"{out} holds {row['experiment']} runs with other settings "
                             f"({row['settings']}); use another --out")
    finished = {(r["experiment"], r["arm"], r["seed"]) for r in done}
    for name in experiments:
        for seed in seeds:
            for arm in EXPERIMENTS[name].arms:
                if (name, arm, seed) in finished:
                    continue
                row = run_one(name, arm, seed, out, stage2_steps, steps, progress)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name} / {arm} / seed {seed}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in row["scores"].items()) + f" ({row['seconds']:.0f} s)", flush=True)
    return summarise(out)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def summarise(out) -> list[dict]:
    """``summary.json`` / ``summary.md`` and a figure per experiment from ``out/runs.jsonl``.

    Each structured arm gets a verdict against its isotropic twin (``_baseline``): ``beyond one std`` when
    its mean of the claimed metric exceeds the baseline's by more than the larger of the two
    standard deviations (sample std over seeds), ``same direction`` when by less, ``opposite``
    otherwise."""
    out = Path(out)
    rows = _done(out)
    summary = []
    for name, experiment in EXPERIMENTS.items():
        mine = [r for r in rows if r["experiment"] == name]
        if not mine:
            continue
        arms = {}
        for arm in experiment.arms:
            seeds = sorted(r["seed"] for r in mine if r["arm"] == arm)
            keys = sorted({k for r in mine if r["arm"] == arm for k in r["scores"]})
            arms[arm] = {"seeds": seeds, "minutes_per_run": statistics.fmean(
                r["seconds"] for r in mine if r["arm"] == arm) / 60 if seeds else None, **{
                k: _mean_std([r["scores"][k] for r in mine if r["arm"] == arm and k in r["scores"]])
                for k in keys}}
        verdicts = {arm: _verdict(arms[_baseline(experiment, arm)], arms[arm], experiment.claim)
                    for arm, options in experiment.arms.items() if options["prior"] != "isotropic"}
        summary.append({"experiment": name, "claim": experiment.claim, "arms": arms, "verdicts": verdicts,
                        "settings": mine[0]["settings"]})
        _figure(out / f"{name}.png", name, experiment, mine)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _baseline(experiment: Experiment, arm: str) -> str:
    """The isotropic arm with ``arm``'s objective (beta, alpha, divergence), else the first arm."""
    def objective(name: str) -> tuple:
        full = {**METHOD_OPTIONS["decomposition"], **experiment.options, **experiment.arms[name]}
        return full["beta"], full["alpha"], full["divergence"]

    twins = [name for name, options in experiment.arms.items()
             if options["prior"] == "isotropic" and objective(name) == objective(arm)]
    return twins[0] if twins else next(iter(experiment.arms))


def _verdict(base: dict, arm: dict, claim: str) -> str | None:
    if not base["seeds"] or not arm["seeds"]:
        return None
    (m0, s0), (m1, s1) = base[claim], arm[claim]
    spread = max([s for s in (s0, s1) if not math.isnan(s)], default=0.0)
    return "beyond one std" if m1 - m0 > spread else "same direction" if m1 > m0 else "opposite"


def _markdown(summary: list[dict]) -> str:
    lines = []
    for s in summary:
        st = s["settings"]
        options = ", ".join(f"{k}={v}" for k, v in st["options"].items())
        lines += [f"### {s['experiment']} ({st['data']}; {options}; {st['steps']} steps of batch "
                  f"{st['batch_size']}, latent dim {st['latent_dim']})", "",
                  f"Claimed: `{s['claim']}` higher with the structured prior. Verdicts against "
                  f"the isotropic arm of the same objective: " + "; ".join(f"{arm} **{v}**" for arm, v in s["verdicts"].items()) + ".", ""]
        keys = [k for k in (*st["metrics"], "mixture_nmi", "full_recon")
                if any(k in a for a in s["arms"].values())]
        lines.append("| arm | seeds | min / run | " + " | ".join(keys) + " |")
        lines.append("|---|---|---|" + "---|" * len(keys))
        for arm, a in s["arms"].items():
            cells = [f"{a[k][0]:.4g} ± {a[k][1]:.2g}" if k in a else "—" for k in keys]
            lines.append(f"| {arm} | {a['seeds']} | {a['minutes_per_run']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _figure(path: Path, name: str, experiment: Experiment, rows: list[dict]) -> None:
    """Per metric a panel: each arm's mean (bar), ± one std (whisker) and its seeds (dots); for the
    digits, the held-out codes of the first seed of each arm in their first two principal axes,
    coloured by digit class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (*experiment.metrics, "full_recon") if any(k in r["scores"] for r in rows)]
    scatter = experiment.data == "digits"
    panels = len(keys) + (len(experiment.arms) if scatter else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    arms = list(experiment.arms)
    for ax, key in zip(axes[0], keys):
        for i, arm in enumerate(arms):
            values = [r["scores"][key] for r in rows if r["arm"] == arm and key in r["scores"]]
            if not values:
                continue
            mean, std = _mean_std(values)
            ax.bar(i, mean, color=f"C{i}", alpha=0.6, yerr=0 if math.isnan(std) else std, capsize=4)
            ax.scatter([i] * len(values), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=25, ha="right", fontsize=8)
        ax.set_title(LABELS.get(key, key), fontsize=9)
    if scatter:
        for ax, arm in zip(axes[0][len(keys):], arms):
            seeds = sorted(r["seed"] for r in rows if r["arm"] == arm)
            codes_file = path.parent / "codes" / f"{name}_{arm}_{seeds[0]}.npz" if seeds else None
            if codes_file is None or not codes_file.exists():
                ax.axis("off")
                continue
            data = np.load(codes_file)
            centred = data["codes"] - data["codes"].mean(0)
            axes2 = np.linalg.svd(centred, full_matrices=False)[2][:2].T
            points = centred @ axes2
            ax.scatter(points[:, 0], points[:, 1], c=data["labels"], cmap="tab10", s=6)
            ax.set_title(f"{arm} codes (seed {seeds[0]}), PCA", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{name}: {experiment.data}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results folder (a rerun resumes it)")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stage2-steps", type=int, default=0,
                        help="also train a VAE stage 2 this many steps on each stage 1 (default 0: stage 1 only)")
    parser.add_argument("--steps", type=int, default=None,
                        help="stage-1 steps of every experiment instead of its own (default: each one's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = run(args.out, args.experiments, tuple(args.seeds), args.stage2_steps, args.steps,
                  not args.quiet)
    print((Path(args.out) / "summary.md").read_text())
    return summary
