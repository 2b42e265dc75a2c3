"""Held-out evaluation of a trained model: reconstruction, likelihood bounds, disentanglement,
sample quality, what ``w`` carries, traversal fidelity, figures."""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msvae import metrics
from msvae.losses import gaussian_kl
from msvae.models.multistage import sweep
from msvae.models.stage2 import log_likelihood, sampled_stage1_output
from msvae.models.training import resolve_precision
from msvae.plotting import save_grid


RECONSTRUCTION_CLAMP = 1e-6  # BCE of a mean image clamps its pixels to [1e-6, 1 - 1e-6]


def _errors(x: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image BCE and squared error of a mean image ``mean`` against ``x``, summed over pixels
    ``[B]``. Both stages are scored by this one rule (BCE of the clamped mean image), so neither
    gains from how it is measured."""
    clamped = mean.clamp(RECONSTRUCTION_CLAMP, 1 - RECONSTRUCTION_CLAMP)
    bce = F.binary_cross_entropy(clamped, x, reduction="none")
    return bce.flatten(1).sum(1), (mean - x).pow(2).flatten(1).sum(1)


@torch.no_grad()
def encode_images(model, load_images: Callable[[np.ndarray], Tensor], indices: np.ndarray,
                  batch_size: int = 256, seed: int = 0) -> dict[str, Tensor]:
    """Codes, reconstruction errors and likelihood bounds of the images ``load_images(indices)``.

    ``model`` is a ``DisentangledVAE`` or a ``MultiStageModel``; the draws are seeded by ``seed``
    (the global RNG is left as it was). Returns, per image:

    - ``mu, logvar [N, D]`` of ``q(z | x)``;
    - ``bce, mse [N]``: stage 1's reconstruction from the posterior mean of ``z`` (``_errors``);
    - ``nll_stage1 [N]``: ``-log p1(x | z) + KL(q(z | x) || p(z))`` with one ``z ~ q(z | x)``, nats;

    and for a multi-stage model (stage-2 contract only):

    - ``full_bce, full_mse [N]``: the full model's reconstruction from ``z = mu(x)`` and
      ``w = encode(x, x1(mu(x)))``; ``w [N, w_dim]``: those codes;
    - ``nll_full [N]``: ``-bound_2(x | x1(z)) + KL(q(z | x) || p(z))`` at the same ``z`` draw, and
      the bound's diagnostics (e.g. ``w_kl [N, w_dim]``) — when the stage 2 has a bound.
    """
    stage1, stage2 = getattr(model, "stage1", model), getattr(model, "stage2", None)
    columns: dict[str, list[Tensor]] = {}
    with torch.random.fork_rng(devices=[stage1.device] if stage1.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(indices), batch_size):
            x = load_images(indices[start:start + batch_size]).to(stage1.device)
            mu, logvar, x1, x1_mean = sampled_stage1_output(stage1, x)
            output = stage1.decoder(mu)
            mean = stage1.mean_output(output)
            row = {"mu": mu, "logvar": logvar, **dict(zip(("bce", "mse"), _errors(x, mean)))}
            kl_z = gaussian_kl(mu, logvar).sum(1)
            row["nll_stage1"] = -log_likelihood(x, x1, stage1.likelihood) + kl_z
            if stage2 is not None:
                row["w"] = stage2.encode(x, output, mean)
                row["full_bce"], row["full_mse"] = _errors(x, stage2.generate(output, mean, row["w"]))
                if stage2.bound is not None:
                    terms = stage2.log_likelihood_bound(x, x1, x1_mean)
                    row["nll_full"] = -terms.pop("log_likelihood") + kl_z
                    row.update(terms)
            for key, value in row.items():
                columns.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in columns.items()}


def _nats_and_bits(nats: float, dims: int) -> dict:
    return {"nats": nats, "bits_per_dim": nats / (dims * math.log(2))}


def reconstruction_summary(encoded: dict[str, Tensor], stage2=None, dims: int = 64 * 64) -> dict:
    """Held-out means from ``encode_images`` (``dims``: values per image, for bits per dimension):

    - ``stage1``, ``full``: ``{bce, mse}``; ``full_over_stage1``: their ratios, omitted when
      ``stage2.exact_inverse`` (then ``full`` says ``exact_inverse: true``: reconstruction through
      an invertible stage 2 is exact by construction and says nothing about the model);
    - ``nll_bound``: ``{stage1: {nats, bits_per_dim}, full: {...}, full_over_stage1, bound}``, the
      negative ELBOs of stage 1 alone and of the full model (``bound``: the stage-2 bound's kind);
    - ``w_kl_per_dim``, ``w_kl``: KL of ``q(w | x, x1)`` from ``p(w)`` when the stage 2 reports it.
    """
    summary: dict = {"stage1": {"bce": float(encoded["bce"].mean()), "mse": float(encoded["mse"].mean())}}
    nll = {"stage1": _nats_and_bits(float(encoded["nll_stage1"].mean()), dims)}
    if "full_bce" in encoded:
        summary["full"] = {"bce": float(encoded["full_bce"].mean()),
                           "mse": float(encoded["full_mse"].mean())}
        if getattr(stage2, "exact_inverse", False):
            summary["full"]["exact_inverse"] = True
        else:
            summary["full_over_stage1"] = {k: summary["full"][k] / summary["stage1"][k]
                                           for k in ("bce", "mse")}
    if "nll_full" in encoded:
        nll["full"] = _nats_and_bits(float(encoded["nll_full"].mean()), dims)
        nll["full_over_stage1"] = nll["full"]["nats"] / nll["stage1"]["nats"]
        nll["bound"] = getattr(stage2, "bound", None)
    elif stage2 is not None:
        nll["full"] = None
        nll["bound"] = "not tractable"
    summary["nll_bound"] = nll
    if "w_kl" in encoded:
        summary["w_kl_per_dim"] = encoded["w_kl"].mean(0).tolist()
        summary["w_kl"] = float(encoded["w_kl"].sum(1).mean())
    return summary


def disentanglement_report(mu: Tensor, logvar: Tensor, factors: np.ndarray, seed: int = 0) -> dict:
    """Every metric of ``msvae.metrics`` on held-out codes (posterior means) and their factors.

    Rows are shuffled (seeded); DCI and SAP train on the first half and test on the second. A
    metric that raises ``ValueError`` is reported as None with its message under ``metric_errors``.
    """
    codes = mu.numpy()
    order = np.random.default_rng(seed).permutation(len(codes))
    codes, factors, mu, logvar = codes[order], factors[order], mu[order], logvar[order]
    half = len(codes) // 2
    train, test = (codes[:half], factors[:half]), (codes[half:], factors[half:])
    report: dict = {"kl_per_dim": gaussian_kl(mu, logvar).mean(0).tolist()}
    errors: dict = {}

    def record(names, compute):
        """A metric that cannot be computed (e.g. on a degenerate code) is reported, not fatal;
        scikit-learn's small-sample warnings (a few held-out images, many factor values) are
        silenced: the numbers are what they are, and ``held_out_images`` says how many."""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")
                warnings.filterwarnings("ignore", "The least populated class in y has only")
                values = compute()
        except ValueError as error:
            errors[names[0]] = str(error)
            values = (None,) * len(names)
        report.update(zip(names, values if len(names) > 1 else (values,)))

    record(["mig"], lambda: metrics.mig(codes, factors))
    record(["mig_chen"], lambda: metrics.mig_chen(mu, logvar, factors,
                                                  num_samples=min(len(codes), 10_000), seed=seed))
    def dci_scores():
        scores = metrics.dci(*train, *test, seed=seed)
        return scores["disentanglement"], scores["completeness"], scores["informativeness_test"]

    record(["dci_disentanglement", "dci_completeness", "dci_informativeness"], dci_scores)
    record(["sap"], lambda: metrics.sap(*train, *test, seed=seed))
    record(["factor_vae_score"], lambda: metrics.factor_vae_score(codes, factors, seed=seed))
    record(["beta_vae_score"], lambda: metrics.beta_vae_score(codes, factors, seed=seed))
    record(["gaussian_total_correlation"], lambda: metrics.gaussian_total_correlation(codes))
    if errors:
        report["metric_errors"] = errors
    return report


def normalized_mutual_info(mu: Tensor | np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``I(z_j; v_k) / H(v_k)`` ``[D, K]`` of binned posterior means and factors (as in MIG)."""
    details = metrics.mig_details(mu, factors)
    return details["mutual_info"] / details["factor_entropy"]


CAPTURED_NMI = 0.2  # a factor is captured by z when some z_j has at least this normalised MI with it
ACTIVE_KL = 0.1  # a latent z_j is active when its mean KL(q || p) exceeds this many nats


def w_leak_report(w: Tensor | np.ndarray, mu: Tensor | np.ndarray, factors: np.ndarray,
                  classes: np.ndarray, names, seed: int = 0) -> dict:
    """What stage 2's codes ``w [N, W]`` say about the factors (``classes [N, K]``), given what
    stage 1's ``mu [N, D]`` says:

    - ``captured`` / ``missed``: ``metrics.code_leak`` of ``w`` against each factor itself, for the
      factors ``z`` captures (normalised MI with ``factors [N, K]`` at least ``CAPTURED_NMI``) and
      for those it misses. For a factor ``z`` captures only in part, ``w`` carrying the rest (what
      a sharp reconstruction needs and stage 1 lacks) shows here too.
    - ``of_z``: ``code_leak`` of ``w`` against each factor's classes *as predicted from* ``mu``
      (``metrics.predicted_classes``): how much of what ``z`` says about the factor ``w`` repeats.
      0 when ``w`` is independent of ``z`` — the model's assumption — whatever ``w`` adds;
      ``max_of_z_captured`` is its maximum over the captured factors, ``z_accuracy`` how well
      ``mu`` predicts each factor.
    """
    nmi = normalized_mutual_info(mu, factors).max(0)
    leak = metrics.code_leak(w, classes, seed=seed)
    z_classes, z_accuracy = metrics.predicted_classes(mu, classes)
    of_z = metrics.code_leak(w, z_classes, seed=seed)
    captured = {n: float(v) for n, v, c in zip(names, leak, nmi >= CAPTURED_NMI) if c}
    missed = {n: float(v) for n, v, c in zip(names, leak, nmi >= CAPTURED_NMI) if not c}
    of_z_captured = [float(v) for v, c in zip(of_z, nmi >= CAPTURED_NMI) if c]
    return {"captured": captured, "missed": missed,
            "max_captured": max(captured.values()) if captured else None,
            "of_z": dict(zip(names, of_z.tolist())),
            "max_of_z_captured": max(of_z_captured) if of_z_captured else None,
            "z_accuracy": dict(zip(names, z_accuracy.tolist())),
            "z_nmi": dict(zip(names, nmi.tolist()))}


@torch.no_grad()
def sample_report(model, classifier, images: Tensor, names, class_sizes, seed: int = 0,
                  batch_size: int = 250) -> dict:
    """Sample quality of stage 1 alone and of the full model against held-out ``images [N, ...]``:
    ``len(images)`` draws ``z ~ p(z)`` (the same for both, and for every stage 2 given the seed;
    stage 1's sample is its mean image, the full model's ``w ~ p(w)``). ``frechet_distance``: in ``classifier``'s features;
    ``coverage_tv``: per factor, the total-variation distance between the classifier's predicted
    class histograms of the samples and of the images."""
    stage1 = model.stage1
    feats_data, classes_data = classifier.embed(images)
    samples: dict[str, list[Tensor]] = {"stage1": [], "full": []}
    with torch.random.fork_rng(devices=[stage1.device] if stage1.device.type == "cuda" else []):
        torch.manual_seed(seed)  # all z first: every stage 2 is scored on the same z
        codes = torch.randn(len(images), stage1.latent_dim, device=stage1.device)
        for start in range(0, len(images), batch_size):
            n = min(batch_size, len(images) - start)
            x1, x1_mean = model.stage1_output(codes[start:start + n])
            samples["stage1"].append(x1_mean.cpu())
            samples["full"].append(model.stage2.generate(x1, x1_mean, model.stage2.sample_w(n)).cpu())
    report: dict = {"frechet_distance": {}, "coverage_tv": {}}
    for stage, chunks in samples.items():
        feats, classes = classifier.embed(torch.cat(chunks))
        report["frechet_distance"][stage] = metrics.frechet_distance(feats, feats_data)
        tv = metrics.factor_coverage(classes, classes_data, class_sizes)
        report["coverage_tv"][stage] = dict(zip(names, tv.tolist()))
    return report


@torch.no_grad()
def traversal_report(model, classifier, images: Tensor, mu: Tensor, factors: np.ndarray, kl_per_dim,
                     names, span: float = 2.5, steps: int = 9) -> dict:
    """``metrics.traversal_fidelity`` of stage 1 alone and of the full model with ``w`` fixed.

    From the codes ``(z, w)`` of each base image of ``images [n, ...]`` and for each active latent
    ``z_k`` (``kl_per_dim[k] > ACTIVE_KL``), ``z_k`` is swept over ``[-span, span]`` in ``steps``
    values and the images are classified; ``z_k`` stands for the factor it has most normalised MI
    with on the held-out codes ``mu [N, D]`` and ``factors [N, K]``. The full model's sweeps hold
    ``w`` at the base image's code. ``dims``: the factor each active latent stands for.
    """
    stands_for = normalized_mutual_info(mu, factors).argmax(1)
    active = [k for k in range(mu.shape[1]) if kl_per_dim[k] > ACTIVE_KL]
    if not active:
        return {"stage1": None, "full": None, "dims": {}}
    values = torch.linspace(-span, span, steps)
    codes, w = model.encode(images)
    classes: dict[str, list[np.ndarray]] = {"stage1": [], "full": []}
    own = []
    for i in range(len(codes)):
        for k in active:
            sweep_codes = sweep(codes[i], k, values)
            classes["stage1"].append(classifier.embed(model.stage1_output(sweep_codes)[1])[1])
            classes["full"].append(classifier.embed(model.decode(sweep_codes, w[i:i + 1].expand(steps, -1)))[1])
            own.append(int(stands_for[k]))
    report = {stage: metrics.traversal_fidelity(np.stack(c), np.array(own))["score"]
              for stage, c in classes.items()}
    report["dims"] = {str(k): names[int(stands_for[k])] for k in active}
    return report


def _classifier_job(dataset, train_indices: np.ndarray, test_indices: np.ndarray, seed: int,
                    steps: int, precision: str, progress: bool):
    """(cache name, settings, trainer) of ``factor_classifier``'s classifier."""
    from msvae.models.factor_classifier import train_factor_classifier

    test = np.random.default_rng(seed).choice(test_indices, min(2000, len(test_indices)), replace=False)
    name = type(dataset).__name__.lower()
    path = getattr(dataset, "path", None)
    settings = {"dataset": name if path is None else f"{name}:{path}",
                "train": _digest(train_indices), "test": _digest(test),
                "steps": steps, "seed": seed, "precision": precision}

    def classes_of(indices: np.ndarray) -> np.ndarray:
        return dataset.factor_classes(dataset.factors(indices))

    return name, settings, lambda: train_factor_classifier(
        dataset.images, classes_of, dataset.class_sizes, train_indices, test, steps=steps,
        seed=seed, precision=precision, progress=progress, channels=getattr(dataset, "channels", 1))


def factor_classifier(dataset, train_indices: np.ndarray, test_indices: np.ndarray,
                      seed: int = 0, steps: int = 2000, precision: str = "auto",
                      progress: bool = True, background: Future | None = None):
    """The factor classifier (``msvae.models.factor_classifier``) of a dataset with factors
    (``DSprites``, ``DigitImages``: ``factors``, ``factor_classes``, ``class_sizes``, ``channels``),
    trained on ``train_indices`` (on the CPU, at ``precision``, resolved as in
    ``training.resolve_precision``) and cached; returns it and its accuracy per factor on 2,000 of
    ``test_indices``. ``background``: the future of ``train_factor_classifier_in_background``
    for the same arguments, waited for first (if it failed, the classifier is trained here)."""
    from msvae.models.factor_classifier import cached_factor_classifier

    if background is not None:
        try:
            background.result()
        except Exception as error:  # noqa: BLE001 - whatever went wrong there, train it here
            warnings.warn(f"the factor classifier's background training failed ({error!r}); "
                          f"training it now")
    return cached_factor_classifier(*_classifier_job(dataset, train_indices, test_indices, seed, steps,
                                                     resolve_precision(precision, "cpu"), progress))


def _train_and_cache(dataset, train_indices, test_indices, seed, steps, precision) -> None:
    """Runs in the background process: one thread, the classifier trained and cached."""
    from msvae.models.factor_classifier import cached_factor_classifier
    from msvae.models.training import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    cached_factor_classifier(*_classifier_job(dataset, train_indices, test_indices, seed, steps,
                                              precision, False))


def train_factor_classifier_in_background(dataset, train_indices: np.ndarray, test_indices: np.ndarray,
                                          seed: int = 0, steps: int = 2000,
                                          precision: str = "auto") -> Future | None:
    """Starts training ``factor_classifier``'s classifier (same arguments) in a separate process
    of one thread, into the cache, and returns its future; None when it is cached already. For a
    core that would idle while ``fit`` trains on one thread: the quick preset's classifier (2,000
    steps, ~105 s on one core) is then ready when the evaluation starts. The result does not
    depend on whether it ran there or here (same seed, settings and thread count)."""
    from msvae.models.factor_classifier import cached_factor_classifier_path

    precision = resolve_precision(precision, "cpu")
    name, settings, _ = _classifier_job(dataset, train_indices, test_indices, seed, steps, precision, False)
    if cached_factor_classifier_path(name, settings).exists():
        return None
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(_train_and_cache, dataset, train_indices, test_indices, seed, steps, precision)
    pool.shutdown(wait=False)  # the worker exits when its one job is done
    return future


def _digest(indices: np.ndarray) -> str:
    """A short digest of an index array (for cache keys)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


@torch.no_grad()
def save_stage1_figures(model, images: Tensor, out_dir: str | os.PathLike, span: float = 2.5,
                        steps: int = 9) -> list[Path]:
    """``reconstructions.png`` (inputs over their reconstructions) and ``traversals.png`` (one row
    per latent: the first image's code with that latent swept over ``[-span, span]``)."""
    out_dir = Path(out_dir)
    images = images.to(model.device)
    recon = model.reconstruct(images)
    paths = [out_dir / "reconstructions.png", out_dir / "traversals.png"]
    save_grid(torch.cat([images, recon]), paths[0], nrow=len(images))
    code = model.encode(images[:1])
    values = torch.linspace(-span, span, steps)
    rows = [model.decode(sweep(code[0], d, values)) for d in range(model.latent_dim)]
    save_grid(torch.cat(rows), paths[1], nrow=steps)
    return paths


@torch.no_grad()
def save_multistage_figures(model, images: Tensor, out_dir: str | os.PathLike, span: float = 2.5,
                            steps: int = 9, num_samples: int = 64, seed: int = 0) -> list[Path]:
    """PNG figures of a ``MultiStageModel`` in ``out_dir``:

    - ``reconstructions.png``: the ``images`` (top row), stage-1 reconstructions, full ones;
    - ``traversals.png`` / ``traversals_stage1.png``: one row per latent ``z_k`` swept over
      ``[-span, span]`` from the first image's codes, with its ``w`` fixed / by stage 1 alone;
    - ``samples.png`` / ``samples_stage1.png``: ``num_samples`` draws ``z ~ p(z)`` (seeded by
      ``seed``) through the full model (``w ~ p(w)``) / stage 1 alone (its mean image).
    """
    out_dir = Path(out_dir)
    images = images.to(model.device)
    paths = [out_dir / name for name in ("reconstructions.png", "traversals.png",
                                         "traversals_stage1.png", "samples.png", "samples_stage1.png")]
    rows = [images, model.reconstruct(images, "stage1"), model.reconstruct(images, "full")]
    save_grid(torch.cat(rows), paths[0], nrow=len(images))
    values = torch.linspace(-span, span, steps)
    z, w = (c[0] for c in model.encode(images[:1]))
    full = [model.traverse(k, values, z=z, w=w) for k in range(model.stage1.latent_dim)]
    save_grid(torch.cat(full), paths[1], nrow=steps)
    first = [model.stage1_output(sweep(z, k, values))[1] for k in range(model.stage1.latent_dim)]
    save_grid(torch.cat(first), paths[2], nrow=steps)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        codes = torch.randn(num_samples, model.stage1.latent_dim, device=model.device)
        samples = model.sample(num_samples, z=codes)
    nrow = int(math.sqrt(num_samples)) or 1
    save_grid(samples, paths[3], nrow=nrow)
    save_grid(model.stage1_output(codes)[1], paths[4], nrow=nrow)
    return paths
