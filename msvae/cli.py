"""The ``msvae`` command.

    msvae fit --out runs/quick --preset quick    # both stages on dSprites, evaluated, with figures
    msvae eval runs/quick                        # re-evaluate a run's model on held-out images
    msvae traverse runs/quick --index 3          # latent traversals of one held-out image, w fixed
    msvae sample runs/quick -n 64                # samples from the model
    msvae stage1 --out runs/stage1 --minutes 55  # stage 1 alone
    msvae compare-tables --out runs/tables       # synthetic tables: msvae vs CTGAN and TVAE
    msvae compare-stage2 --out runs/stage2       # VAE, flow, GAN and mixture stage 2 on one stage 1
    msvae compare-methods --out runs/headline    # stage-1 methods x the same stage 2, two datasets

Each run writes one folder: ``config.json`` (the resolved settings), checkpoints (a rerun with the
same ``--out`` resumes from them), the trained ``model.pt``, ``history.json``, ``metrics.json``
(held-out reconstruction errors, disentanglement metrics) and PNG figures.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from msvae.data import DSprites
from msvae.data.images import DigitImages, ImageFiles
from msvae.data.shapes3d import Shapes3D
from msvae.distributed import broadcast_object, rank_and_size
from msvae.evaluation import (disentanglement_report, encode_images, factor_classifier,
                              reconstruction_summary, sample_report, save_multistage_figures,
                              save_stage1_figures, train_factor_classifier_in_background,
                              traversal_report, w_leak_report)
from msvae.losses import DIVERGENCES, gaussian_kl
from msvae.methods import METHOD_OPTIONS, METHODS, PRIORS, stage1_loss
from msvae.models import DisentangledVAE, MultiStageModel
from msvae.models.training import PRECISIONS, flush_denormals, keep_freed_memory, resolve_precision

DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# ``msvae fit`` presets; any option given on the command line overrides its preset's value.
PRESETS = {
    # The whole pipeline on a 2-core CPU: 8 min 11 s idle on an AVX512 EPYC (float32, one thread,
    # the factor classifier trained meanwhile on the other core; 3,600 + 1,500 steps are what fit
    # in 10 minutes there with a margin). Bounded by steps, not minutes, so a busy
    # machine trains the same model, only slower.
    "quick": dict(stage2="vae", latent_dim=10, w_dim=16, method="betatcvae",
                  method_options=dict(alpha=1.0, beta=6.0, gamma=1.0, estimator="mss"), batch_size=64, lr=1e-3, stage2_lr=1e-3, warmup=500,
                  stage1_steps=3600, stage1_minutes=None, stage2_steps=1500,
                  stage2_minutes=None, free_bits=0.0, kl_warmup=500, w_encoder="pooled",
                  w_centred=True, w_centring="neighbours", components=8, eval_size=2000,
                  precision="auto"),
    # Full-length training, meant for a GPU.
    "paper": dict(stage2="vae", latent_dim=10, w_dim=16, method="betatcvae",
                  method_options=dict(alpha=1.0, beta=6.0, gamma=1.0, estimator="mss"), batch_size=64, lr=5e-4, stage2_lr=5e-4, warmup=5000,
                  stage1_steps=300_000, stage1_minutes=None, stage2_steps=100_000,
                  stage2_minutes=None, free_bits=0.0, kl_warmup=5000, w_encoder="pooled",
                  w_centred=True, w_centring="neighbours", components=8, eval_size=10_000,
                  precision="auto"),
}
CLASSIFIER_STEPS = 2000  # training steps of the dSprites factor classifier that judges samples
FLOW_OPTIONS = dict(levels=3, steps=4, hidden=64, quantization=2)  # dSprites pixels are binary


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def _number(minimum: float | None = None, strict: bool = True, integer: bool = False):
    """An argparse ``type``: a finite number (an integer when ``integer``) above ``minimum``
    (or at least it, unless ``strict``); anything else is a one-line usage error."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    kind = "an integer" if integer else "a finite number"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}{bound}, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and (value <= minimum if strict else value < minimum)):
            raise argparse.ArgumentTypeError(f"must be {kind}{bound}, got {text!r}")
        return value

    return parse


POSITIVE_INT, POSITIVE, NONNEGATIVE = _number(0, integer=True), _number(0), _number(0, strict=False)
EVAL_SIZE = _number(20, strict=False, integer=True)


def _fraction(text: str) -> float:
    value = POSITIVE(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def _device(text: str) -> str:
    """An argparse ``type``: a torch device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no usable CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def _out_folder(out: Path) -> Path:
    """Creates the run folder ``out`` (or checks the existing one) and that it is writable."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"msvae: --out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".msvae-write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"msvae: cannot write to --out {out}: {error.strerror or error}") from None
    return out


# Settings a rerun in the same folder may change: they do not change the model that is trained.
# (More steps or minutes continue the same training.)
RESUMABLE = ("out", "threads", "quiet", "device", "eval_size", "classifier_steps", "checkpoint_every",
             "steps", "stage1_steps", "stage2_steps", "minutes", "stage1_minutes", "stage2_minutes")


def _record_config(out: Path, config: dict) -> None:
    """Writes ``config.json`` — after checking that a run already in ``out`` has the same
    settings (other than ``RESUMABLE``), so a refused rerun leaves the record as it was."""
    path = out / "config.json"
    if path.exists():
        def flat(settings: dict) -> dict:  # {"method_options": {"beta": 6}} -> {"beta": 6}
            return {**{k: v for k, v in settings.items() if not isinstance(v, dict)},
                    **{k: v for d in settings.values() if isinstance(d, dict) for k, v in d.items()}}

        old, config_flat = flat(json.loads(path.read_text())), flat(config)
        changed = sorted(k for k in set(old) | set(config_flat)
                         if k not in RESUMABLE and old.get(k) != config_flat.get(k))
        if changed:
            diff = "; ".join(f"{k}: {old.get(k)!r} there, {config_flat.get(k)!r} now" for k in changed)
            raise SystemExit(f"msvae: {out} holds a run with other settings ({diff}); "
                             f"use another --out, or the same settings to resume it")
    _write_json(path, config)


def _train_seconds(histories) -> float:
    """Training time of all processes that worked on a run (the last ``seconds`` of each history)."""
    return sum(h[-1].get("seconds", 0.0) for h in histories if h)


@contextlib.contextmanager
def _processes(device: str):
    """The process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1; NCCL for CUDA, gloo on the
    CPU; each process on its ``LOCAL_RANK``'s GPU), destroyed at the end; None for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _first_rank(group, action):
    """``action()`` on the group's first rank alone; a ``SystemExit`` there (a refused setting)
    ends every rank with the same message instead of leaving them waiting."""
    message = None
    if rank_and_size(group)[0] == 0:
        try:
            action()
        except SystemExit as error:
            message = str(error)
    message = broadcast_object(message, group)
    if message is not None:
        raise SystemExit(message)


def _process_device(config: dict, group) -> str:
    """This process's device: under torchrun with CUDA, the GPU of its ``LOCAL_RANK``."""
    if group is not None and torch.device(config["device"]).type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return config["device"]


def _read_config(run: Path) -> dict:
    path = run / "config.json"
    if not path.exists():
        raise SystemExit(f"msvae: {run} is not a run folder (no config.json)")
    return json.loads(path.read_text())


DATASETS = ("dsprites", "shapes3d", "digits")


def _resolve_data(config: dict) -> None:
    """``config["dataset"]``: ``"files"`` with ``--data``, else ``--dataset`` (default dsprites)."""
    if config.get("data"):
        if config.get("dataset") not in (None, "files") or config.get("dsprites") or config.get("shapes3d"):
            raise SystemExit("msvae: --data (your own images) cannot be combined with --dataset, "
                             "--dsprites or --shapes3d")
        config["dataset"] = "files"
    else:
        config["dataset"] = config.get("dataset") or "dsprites"
        for name, title in (("dsprites", "dSprites"), ("shapes3d", "3D Shapes")):
            if config["dataset"] != name and config.get(name):
                raise SystemExit(f"msvae: --{name} is the {title} file; it goes with --dataset {name} only")
    if config.get("data") or config.get("shapes3d"):
        _dataset(config)  # a file that cannot be read is refused before the run folder is written


def _dataset(config: dict):
    """The images of a run: ``--data PATH`` (a user's, ``ImageFiles``), else ``--dataset``."""
    if config.get("data"):
        try:
            return ImageFiles(config["data"])
        except ValueError as error:
            raise SystemExit(f"msvae: --data {config['data']}: {error}") from None
    if config.get("dataset", "dsprites") == "digits":
        return DigitImages()
    if config.get("dataset") == "shapes3d":
        try:
            return Shapes3D(config.get("shapes3d"))
        except ValueError as error:
            raise SystemExit(f"msvae: --shapes3d: {error}") from None
    return DSprites(config.get("dsprites"))


def _data(config: dict) -> tuple:
    """The dataset, its training and held-out indices, and the held-out indices that are evaluated."""
    dataset = _dataset(config)
    try:
        train_idx, test_idx = dataset.split(config["held_out"], seed=config["seed"])
    except ValueError as error:
        raise SystemExit(f"msvae: --held-out {config['held_out']}: {error}") from None
    if len(train_idx) < 2 or len(test_idx) < 1:
        raise SystemExit(f"msvae: {len(dataset)} images split into {len(train_idx)} for training and "
                         f"{len(test_idx)} held out (--held-out {config['held_out']}): too few")
    eval_idx = np.random.default_rng(config["seed"]).choice(
        test_idx, min(config["eval_size"], len(test_idx)), replace=False)
    return dataset, train_idx, test_idx, eval_idx


def _classifier_in_background(config: dict, dataset, train_idx, test_idx, rank: int):
    """The factor classifier that will judge the samples, trained meanwhile in a process of its
    own when the machine has a core this run leaves idle (``evaluation.
    train_factor_classifier_in_background``; the classifier is the one the evaluation would
    train); None when it is cached, not needed, or there is no spare core."""
    if rank != 0 or dataset.factor_names is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= (config["threads"] if config["device"] == "cpu" else 0):
        return None
    future = train_factor_classifier_in_background(dataset, train_idx, test_idx, seed=config["seed"],
                                                   steps=config["classifier_steps"])
    if future is not None and not config["quiet"]:
        print("factor classifier: training in a background process (for the evaluation; cached)",
              file=sys.stderr, flush=True)
    return future


def _evaluate(model, dataset: DSprites, train_idx: np.ndarray, test_idx: np.ndarray,
              eval_idx: np.ndarray, seed: int, progress: bool = True,
              classifier_steps: int = CLASSIFIER_STEPS, classifier=None) -> dict:
    """Held-out metrics (``metrics.json``): reconstruction, ``nll_bound``, disentanglement of ``z``
    and, for a multi-stage model, ``samples``, ``w_leak`` and ``traversal_fidelity``, judged by
    the dataset's factor classifier (trained on the training images on first use, then cached;
    ``classifier``: the future of its training in the background, ``_classifier_in_background``);
    for data without factors only reconstruction, ``nll_bound`` and KL per latent (``skipped``)."""
    encoded = encode_images(model, dataset.images, eval_idx, seed=seed)
    results = {**reconstruction_summary(encoded, getattr(model, "stage2", None)),
               "held_out_images": len(eval_idx)}
    if dataset.factor_names is None:  # a user's images: nothing to judge codes or samples by
        results["kl_per_dim"] = gaussian_kl(encoded["mu"], encoded["logvar"]).mean(0).tolist()
        results["skipped"] = ("the data has no factors: disentanglement metrics, samples (the "
                              "factor classifier's Fréchet distance and coverage), w_leak and "
                              "traversal_fidelity are not computed")
        return results
    factors = dataset.factors(eval_idx)
    report = disentanglement_report(encoded["mu"], encoded["logvar"], factors, seed=seed)
    results.update(report)
    if isinstance(model, MultiStageModel):
        names = dataset.factor_names
        classifier, accuracy = factor_classifier(dataset, train_idx, test_idx, seed=seed,
                                                 steps=classifier_steps, progress=progress,
                                                 background=classifier)
        images = dataset.images(eval_idx)
        results["samples"] = {**sample_report(model, classifier, images, names, dataset.class_sizes,
                                              seed=seed),
                              "classifier_accuracy": dict(zip(names, accuracy))}
        results["w_leak"] = w_leak_report(encoded["w"], encoded["mu"], factors,
                                          dataset.factor_classes(factors), names, seed=seed)
        results["traversal_fidelity"] = traversal_report(model, classifier, images[:16], encoded["mu"],
                                                         factors, report["kl_per_dim"], names)
    return results


def _print_summary(results: dict) -> None:
    keys = ("stage1", "full", "full_over_stage1", "nll_bound", "w_kl", "mig", "mig_chen",
            "dci_disentanglement", "steps", "train_seconds")
    summary = {k: results[k] for k in (*keys, "skipped") if k in results}
    if "samples" in results:
        summary["sample_frechet_distance"] = results["samples"]["frechet_distance"]
        summary["w_leak_max_captured"] = results["w_leak"]["max_captured"]
        summary["w_leak_max_of_z_captured"] = results["w_leak"]["max_of_z_captured"]
        summary["traversal_fidelity"] = {k: results["traversal_fidelity"][k] for k in ("stage1", "full")}
    print(json.dumps(summary, indent=1))


def stage2_options(config: dict, kind: str | None = None) -> dict:
    """The constructor options of the stage 2 ``kind`` (default ``config["stage2"]``) from a run's
    settings."""
    kind = kind or config["stage2"]
    return {"vae": dict(w_dim=config["w_dim"], free_bits=config["free_bits"],
                        kl_warmup=config["kl_warmup"], encoder=config["w_encoder"],
                        centred=config["w_centred"], centring=config["w_centring"]),
            "flow": FLOW_OPTIONS, "gan": dict(w_dim=config["w_dim"]),
            "mog": dict(components=config["components"])}[kind]


# Command-line options of the stage-1 methods (``methods.METHOD_OPTIONS``), all methods together.
METHOD_FLAGS = sorted({name for options in METHOD_OPTIONS.values() for name in options})


def _resolve_method(config: dict, preset: dict | None = None) -> None:
    """Moves the method options given on the command line from ``config`` into
    ``config["method_options"]``: the method's defaults, then the preset's values when the preset
    is for the same method, then the command line. An option of another method is refused."""
    given = {k: config.pop(k) for k in METHOD_FLAGS if k in config}
    given = {k: v for k, v in given.items() if v is not None}
    method = config["method"]
    wrong = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        own = ", ".join("--" + k.replace("_", "-") for k in METHOD_OPTIONS[method])
        raise SystemExit(f"msvae: {flags} is not an option of --method {method} (its options: {own})")
    preset = preset or {}
    base = preset.get("method_options", {}) if preset.get("method") == method else {}
    config["method_options"] = {**METHOD_OPTIONS[method], **base, **given}


def _stage1_loss(config: dict, dataset_size: int, group=None):
    """The stage-1 objective of a run's ``method`` and ``method_options``."""
    return stage1_loss(config["method"], latent_dim=config["latent_dim"], dataset_size=dataset_size,
                       process_group=group, **config["method_options"])


def _minutes(value: float | None) -> float | None:
    return None if value is None else 60.0 * value


def stage1(args: argparse.Namespace) -> dict:
    """Trains and evaluates a stage 1 (``--method``, default beta-TCVAE) on ``--dataset`` / ``--data``;
    returns the metrics (on the first
    process of a torchrun launch; {} on the others)."""
    config = {k: v for k, v in vars(args).items() if k != "func"}
    _resolve_method(config)
    _resolve_data(config)
    with _processes(config["device"]) as group:
        rank, ranks = rank_and_size(group)
        if ranks > 1:
            config["processes"] = ranks
        out = Path(args.out)
        config["precision"] = resolve_precision(config["precision"], config["device"])
        _first_rank(group, lambda: _record_config(_out_folder(out), config))
        torch.set_num_threads(args.threads)
        dataset, train_idx, test_idx, eval_idx = _data(config)
        torch.manual_seed(args.seed)
        model = DisentangledVAE.for_images(latent_dim=args.latent_dim, channels=dataset.channels).to(
            _process_device(config, group))
        model.fit(Subset(dataset, train_idx.tolist()), loss=_stage1_loss(config, len(train_idx), group),
                  steps=args.steps, batch_size=args.batch_size, lr=args.lr, penalty_warmup=args.warmup,
                  checkpoint_dir=out, checkpoint_every=args.checkpoint_every, progress=not args.quiet,
                  seed=args.seed, time_limit=_minutes(args.minutes), precision=config["precision"],
                  process_group=group)
    if rank != 0:
        return {}
    model.save(out / "model.pt")
    _write_json(out / "history.json", model.history)
    results = {**_evaluate(model, dataset, train_idx, test_idx, eval_idx, args.seed),
               "steps": model.history[-1]["step"] if model.history else 0,
               "train_seconds": _train_seconds([model.history])}
    _write_json(out / "metrics.json", results)
    save_stage1_figures(model, dataset.images(eval_idx[:8]), out)
    _print_summary(results)
    return results


def fit(args: argparse.Namespace) -> dict:
    """Fits both stages on ``--dataset`` / ``--data`` from a preset, evaluates on held-out images,
    draws figures.
    Under ``torchrun`` every process trains its share of each global batch (``--batch-size``)
    and the first alone writes the run folder and evaluates (the others return {})."""
    config = {**PRESETS[args.preset], **{k: v for k, v in vars(args).items()
                                          if (v is not None or k in METHOD_FLAGS) and k != "func"}}
    _resolve_method(config, PRESETS[args.preset])
    _resolve_data(config)
    with _processes(config["device"]) as group:
        rank, ranks = rank_and_size(group)
        if ranks > 1:  # the noise of each process is its own: another count trains another model
            config["processes"] = ranks
        out = Path(config["out"])
        config["precision"] = resolve_precision(config["precision"], config["device"])
        _first_rank(group, lambda: _record_config(_out_folder(out), config))
        torch.set_num_threads(config["threads"])
        dataset, train_idx, test_idx, eval_idx = _data(config)
        classifier = _classifier_in_background(config, dataset, train_idx, test_idx, rank)
        torch.manual_seed(config["seed"])  # the model's initial weights
        model = MultiStageModel.for_images(config["latent_dim"], channels=dataset.channels, stage2=config["stage2"],
                                           **stage2_options(config)).to(_process_device(config, group))
        model.fit(Subset(dataset, train_idx.tolist()),
                  stage1_loss=_stage1_loss(config, len(train_idx), group), stage1_steps=config["stage1_steps"],
                  stage2_steps=config["stage2_steps"], stage1_lr=config["lr"],
                  stage2_lr=config["stage2_lr"], batch_size=config["batch_size"],
                  penalty_warmup=config["warmup"], stage1_time_limit=_minutes(config["stage1_minutes"]),
                  stage2_time_limit=_minutes(config["stage2_minutes"]), checkpoint_dir=out,
                  checkpoint_every=config["checkpoint_every"], progress=not config["quiet"],
                  seed=config["seed"], precision=config["precision"], process_group=group)
    if rank != 0:
        return {}
    model.save(out / "model.pt")
    _write_json(out / "history.json", model.history)
    results = {**_evaluate(model, dataset, train_idx, test_idx, eval_idx, config["seed"],
                           progress=not config["quiet"], classifier_steps=config["classifier_steps"],
                           classifier=classifier),
               "steps": {stage: h[-1]["step"] if h else 0 for stage, h in model.history.items()},
               "train_seconds": _train_seconds(model.history.values())}
    _write_json(out / "metrics.json", results)
    save_multistage_figures(model, dataset.images(eval_idx[:8]), out)
    _print_summary(results)
    return results


def _load_run(run: Path) -> tuple[dict, MultiStageModel]:
    config = _read_config(run)
    if not (run / "model.pt").exists():
        raise SystemExit(f"msvae: {run} has no model.pt (has its fit finished?)")
    try:
        model = MultiStageModel.load(run / "model.pt")
    except ValueError as error:
        raise SystemExit(f"msvae: {error}") from None
    return config, model.to(DEFAULT_DEVICE if config.get("device") is None else config["device"])


def evaluate(args: argparse.Namespace) -> dict:
    """Re-evaluates a run's model into its own folder (``RUN/eval`` unless ``--out``): the
    metrics and figures of ``msvae fit`` (seeded as there), the fit's own files left as they are."""
    run = Path(args.run)
    config, model = _load_run(run)
    out = _out_folder(Path(args.out) if args.out else run / "eval")
    if args.eval_size is not None:
        config["eval_size"] = args.eval_size
    dataset, train_idx, test_idx, eval_idx = _data(config)
    results = _evaluate(model, dataset, train_idx, test_idx, eval_idx, config["seed"],
                        progress=not config.get("quiet", False),
                        classifier_steps=config.get("classifier_steps", CLASSIFIER_STEPS))
    _write_json(out / "metrics.json", results)
    save_multistage_figures(model, dataset.images(eval_idx[:8]), out)
    _print_summary(results)
    return results


def traverse(args: argparse.Namespace) -> Path:
    """Traversals of every latent from one held-out image, its ``w`` fixed, as one PNG."""
    from msvae.plotting import save_grid

    run = Path(args.run)
    config, model = _load_run(run)
    dataset, _, _, eval_idx = _data(config)
    if not 0 <= args.index < len(eval_idx):
        raise SystemExit(f"msvae: --index must be in [0, {len(eval_idx)}), got {args.index}")
    image = dataset.images(eval_idx[args.index:args.index + 1])[0]
    values = torch.linspace(-args.span, args.span, args.steps)
    rows = [model.traverse(k, values, x=image) for k in range(model.stage1.latent_dim)]
    path = Path(args.png or run / f"traversal_{args.index}.png")
    save_grid(torch.cat(rows), path, nrow=args.steps)
    print(path)
    return path


def sample(args: argparse.Namespace) -> Path:
    """Samples from a run's model as one PNG grid."""
    from msvae.plotting import save_grid

    run = Path(args.run)
    _, model = _load_run(run)
    torch.manual_seed(args.seed)
    images = model.sample(args.n, temperature=args.temperature)
    path = Path(args.png or run / f"samples_{args.seed}.png")
    save_grid(images, path, nrow=max(1, int(args.n ** 0.5)))
    print(path)
    return path


def compare_tables(args: argparse.Namespace) -> list[dict]:
    """Fits and scores the table synthesizers (see ``msvae.tabular_benchmark``)."""
    from msvae import tabular_benchmark

    torch.set_num_threads(args.threads)
    out = _out_folder(Path(args.out))
    _write_json(out / "config.json", {k: v for k, v in vars(args).items() if k != "func"})
    return tabular_benchmark.run(args.tables, args.seeds, out, epochs=args.epochs,
                                 stage2_epochs=args.stage2_epochs, peer_epochs=args.peer_epochs,
                                 synthesizers=args.synthesizers, max_rows=args.max_rows,
                                 target=args.target, discrete_columns=args.discrete, stage2=args.stage2,
                                 min_steps=args.min_steps)


def compare_methods(args: argparse.Namespace) -> dict:
    """Stage-1 methods, each with the same stage 2, on dSprites and 3D Shapes (``msvae.headline_benchmark``)."""
    from msvae import headline_benchmark

    torch.set_num_threads(args.threads)
    summary = headline_benchmark.run(args.out, args.datasets, args.methods, args.preset, args.seeds,
                                     args.device, not args.quiet, stage1_steps=args.stage1_steps,
                                     stage2_steps=args.stage2_steps, eval_size=args.eval_size)
    print((Path(args.out) / "summary.md").read_text())
    return summary


def compare_stage2(args: argparse.Namespace) -> list[dict]:
    """The four stage-2 classes on one stage 1 (see ``msvae.stage2_benchmark``)."""
    from msvae import stage2_benchmark

    torch.set_num_threads(args.threads)
    out = _out_folder(Path(args.out))
    _write_json(out / "config.json", {k: v for k, v in vars(args).items() if k != "func"})
    rows = stage2_benchmark.run(out, args.kinds, minutes=args.minutes, seed=args.seed,
                                eval_size=args.eval_size, stage1=args.stage1,
                                stage1_steps=args.stage1_steps, progress=not args.quiet,
                                classifier_steps=args.classifier_steps)
    print((out / "summary.md").read_text())
    return rows


def _common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options shared by ``fit`` and ``stage1``; ``fit`` leaves them None so presets fill them."""
    d = (lambda value: value) if defaults else (lambda value: None)
    parser.add_argument("--out", required=True, help="run folder (created; reused to resume)")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dsprites (737,280 binary images, 5 factors), shapes3d (480,000 RGB "
                             "images, 6 factors, rendered) or digits (scikit-learn's 1,797 "
                             "handwritten digits upscaled to 64x64; the digit is their factor)")
    parser.add_argument("--shapes3d", default=None, help="official 3dshapes.h5 (default: rendered procedurally; needs h5py)")
    parser.add_argument("--data", default=None,
                        help="your own images instead: a folder of image files or an .npy / .npz "
                             "array (centre-cropped, resized to 64x64; grey or RGB); no factors, "
                             "so metrics that need them are skipped")
    parser.add_argument("--dsprites", default=None, help="official dSprites .npz (default: rendered procedurally)")
    parser.add_argument("--latent-dim", type=POSITIVE_INT, default=d(10))
    parser.add_argument("--method", choices=METHODS, default=d("betatcvae"),
                        help="stage-1 objective (default: the preset's, beta-TCVAE); each reads only "
                             "its own options below, and refuses the others")
    parser.add_argument("--alpha", type=NONNEGATIVE, default=None,
                        help="betatcvae: weight of the index-code MI (1); decomposition: weight of "
                             "the divergence D(q(z), p(z)) (0)")
    parser.add_argument("--beta", type=NONNEGATIVE, default=None,
                        help="betavae: KL weight (4); betatcvae: total-correlation weight (6); "
                             "decomposition: weight of KL(q(z|x) || p(z)) (1)")
    parser.add_argument("--gamma", type=NONNEGATIVE, default=None,
                        help="betatcvae: dimension-wise KL weight (1); factorvae: TC weight (40)")
    parser.add_argument("--estimator", choices=["mss", "mws"], default=None, help="betatcvae: minibatch estimator")
    parser.add_argument("--lambda-od", type=NONNEGATIVE, default=None, help="dipvae: off-diagonal weight (10)")
    parser.add_argument("--lambda-d", type=NONNEGATIVE, default=None, help="dipvae: diagonal weight (default lambda-od)")
    parser.add_argument("--dip-variant", choices=["i", "ii"], default=None, help="dipvae: DIP-VAE-I or -II (ii)")
    parser.add_argument("--prior", choices=PRIORS, default=None,
                        help="decomposition: p(z) (isotropic; see msvae.methods.make_prior)")
    parser.add_argument("--divergence", choices=DIVERGENCES, default=None,
                        help="decomposition: the estimator of D(q(z), p(z)) (inclusive_kl)")
    parser.add_argument("--prior-components", type=POSITIVE_INT, default=None, help="decomposition, --prior mixture: components (10)")
    parser.add_argument("--anisotropy", type=_number(1), default=None,
                        help="decomposition, --prior anisotropic: ratio of the largest to the smallest prior scale (5)")
    parser.add_argument("--df", type=POSITIVE, default=None, help="decomposition, --prior studentt: degrees of freedom (3)")
    parser.add_argument("--spike-weight", type=_fraction, default=None, help="decomposition, --prior spikeslab: weight of the spike (0.8)")
    parser.add_argument("--spike-scale", type=POSITIVE, default=None, help="decomposition, --prior spikeslab: scale of the spike (0.05)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=d(64),
                        help="the global batch (under torchrun split over the processes)")
    parser.add_argument("--lr", type=POSITIVE, default=d(5e-4), help="stage-1 learning rate")
    parser.add_argument("--warmup", type=_number(0, strict=False, integer=True), default=d(0),
                        help="steps of linear warm-up of the stage-1 penalty")
    parser.add_argument("--held-out", type=_fraction, default=0.1, help="fraction of images held out")
    parser.add_argument("--eval-size", type=EVAL_SIZE, default=d(10_000),
                        help="held-out images evaluated (at least 20: the metrics need that many)")
    parser.add_argument("--checkpoint-every", type=POSITIVE_INT, default=1000,
                        help="steps between checkpoints (one is also written every minute)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model's weights, batches and draws")
    parser.add_argument("--threads", type=POSITIVE_INT, default=1,
                        help="torch CPU threads (default 1: the result then does not depend on the "
                             "machine's cores or load; more threads are faster on an idle machine)")
    parser.add_argument("--device", type=_device, default=DEFAULT_DEVICE,
                        help="torch device (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=d("auto"),
                        help="training arithmetic of the networks: bf16 autocast (losses and "
                             "weights float32), fp32, or auto: bf16 where the device computes it "
                             "natively (AMX CPUs, recent GPUs); recorded as resolved")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (naming the option), without the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    f = commands.add_parser("fit", help="fit stage 1 then stage 2 (dSprites, 3D Shapes, digits or your images), evaluate, draw figures")
    f.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: 3,600 + 1,500 steps (8-10 min on an idle 2-core CPU); "
                        "paper: full length, for a GPU")
    _common(f, defaults=False)
    f.add_argument("--stage2", choices=["vae", "flow", "gan", "mog"], default=None,
                   help="second-stage model: conditional VAE, flow, GAN (with an encoder) or a "
                        "mixture of K components")
    f.add_argument("--components", type=_number(1, integer=True), default=None,
                   help="components of the mixture stage 2 (--stage2 mog)")
    f.add_argument("--w-dim", type=POSITIVE_INT, default=None, help="size of w (VAE and GAN stage 2)")
    f.add_argument("--free-bits", type=NONNEGATIVE, default=None, help="initial free-bits floor of w (nats per dimension), decayed to 0 over --kl-warmup")
    f.add_argument("--kl-warmup", type=_number(0, strict=False, integer=True), default=None, help="steps of linear warm-up of w's KL")
    f.add_argument("--w-encoder", choices=["dense", "pooled"], default=None,
                   help="q(w | x, x1): dense head over the conv map, or a global max over positions")
    f.add_argument("--w-centred", action=argparse.BooleanOptionalAction, default=None,
                   help="centre q(w | x, x1)'s mean on an estimate of E[mean | x1], so w carries no trace of z")
    f.add_argument("--w-centring", choices=["regression", "neighbours"], default=None,
                   help="how that estimate is made: a network, or nearest neighbours among recent batches")
    f.add_argument("--stage2-lr", type=POSITIVE, default=None)
    f.add_argument("--classifier-steps", type=POSITIVE_INT, default=CLASSIFIER_STEPS,
                   help="training steps of the factor classifier that scores samples (cached)")
    for stage in ("stage1", "stage2"):
        f.add_argument(f"--{stage}-steps", type=POSITIVE_INT, default=None, help=f"{stage} steps")
        f.add_argument(f"--{stage}-minutes", type=POSITIVE, default=None,
                       help=f"stop {stage} training after this many minutes")
    f.set_defaults(func=fit)

    e = commands.add_parser("eval", help="re-evaluate a run's model on held-out images")
    e.add_argument("run", help="run folder written by msvae fit")
    e.add_argument("--eval-size", type=EVAL_SIZE, default=None, help="held-out images (default: the run's)")
    e.add_argument("--out", default=None, help="output folder (default: RUN/eval)")
    e.set_defaults(func=evaluate)

    t = commands.add_parser("traverse", help="traverse every latent of one held-out image, w fixed")
    t.add_argument("run", help="run folder written by msvae fit")
    t.add_argument("--index", type=int, default=0, help="which evaluated held-out image")
    t.add_argument("--span", type=POSITIVE, default=2.5, help="values from -span to span")
    t.add_argument("--steps", type=_number(1, integer=True), default=9, help="values per latent (>= 2)")
    t.add_argument("--png", default=None, help="output file (default: RUN/traversal_INDEX.png)")
    t.set_defaults(func=traverse)

    s = commands.add_parser("sample", help="draw samples from a run's model")
    s.add_argument("run", help="run folder written by msvae fit")
    s.add_argument("-n", type=POSITIVE_INT, default=64, help="number of samples")
    s.add_argument("--temperature", type=NONNEGATIVE, default=1.0, help="scale of w's prior")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--png", default=None, help="output file (default: RUN/samples_SEED.png)")
    s.set_defaults(func=sample)

    c = commands.add_parser("compare-tables",
                            help="synthetic tables: msvae, its stage 1, CTGAN, TVAE and a Gaussian copula on real tables")
    c.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    c.add_argument("--tables", nargs="+", default=["adult", "breast_cancer", "wine", "diabetes"],
                   help="adult, scikit-learn tables (breast_cancer, wine, diabetes, iris), CSV files")
    c.add_argument("--target", default=None, help="a CSV table's prediction column (ML efficacy)")
    c.add_argument("--discrete", nargs="*", default=[],
                   help="a CSV table's categorical columns (besides the non-numeric ones)")
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--synthesizers", nargs="+", default=None,
                   help="msvae (also scored by its stage 1 alone), ctgan, tvae, ctgan_equal_time, "
                        "tvae_equal_time (msvae's fit time), gaussian_copula (default: all available)")
    c.add_argument("--epochs", type=POSITIVE_INT, default=100, help="passes over the rows (stage 1)")
    c.add_argument("--stage2-epochs", type=POSITIVE_INT, default=None, help="default: --epochs")
    c.add_argument("--min-steps", type=POSITIVE_INT, default=1000,
                   help="msvae: each stage may train this many steps at least (held-out selection may end it sooner)")
    c.add_argument("--peer-epochs", type=POSITIVE_INT, default=None, help="CTGAN/TVAE epochs (default: theirs, 300)")
    c.add_argument("--stage2", choices=["vae", "flow", "mog"], default="flow", help="msvae's stage 2")
    c.add_argument("--max-rows", type=POSITIVE_INT, default=None, help="use at most this many rows per table")
    c.add_argument("--threads", type=POSITIVE_INT, default=1)
    c.set_defaults(func=compare_tables)

    c2 = commands.add_parser("compare-stage2",
                             help="the four stage-2 classes on one stage 1, equal time budgets")
    c2.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    c2.add_argument("--kinds", nargs="+", choices=["vae", "flow", "gan", "mog"],
                    default=["vae", "flow", "gan", "mog"])
    c2.add_argument("--minutes", type=POSITIVE, default=10.0, help="training budget of each stage 2")
    c2.add_argument("--stage1", default=None, help="a stage1.pt checkpoint to start from")
    c2.add_argument("--stage1-steps", type=POSITIVE_INT, default=None,
                    help="stage-1 steps (default: the quick preset's)")
    c2.add_argument("--eval-size", type=EVAL_SIZE, default=2000)
    c2.add_argument("--classifier-steps", type=POSITIVE_INT, default=CLASSIFIER_STEPS)
    c2.add_argument("--seed", type=int, default=0)
    c2.add_argument("--threads", type=POSITIVE_INT, default=1)
    c2.add_argument("--quiet", action="store_true", help="no progress output")
    c2.set_defaults(func=compare_stage2)

    from msvae import headline_benchmark as hb

    cm = commands.add_parser("compare-methods",
                             help="stage-1 methods + the same stage 2 on dSprites and 3D Shapes (resumable)")
    cm.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    cm.add_argument("--datasets", nargs="+", choices=list(hb.DATASETS), default=list(hb.DATASETS))
    cm.add_argument("--methods", nargs="+", choices=list(hb.METHODS), default=list(hb.METHODS))
    cm.add_argument("--preset", choices=list(hb.PRESETS), default="cpu",
                    help="cpu: 600 + 200 steps a run, 2 seeds (about 100 min on a 2-core CPU); paper: full length, for a GPU")
    cm.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the preset's")
    cm.add_argument("--stage1-steps", type=POSITIVE_INT, default=None, help="default: the preset's")
    cm.add_argument("--stage2-steps", type=POSITIVE_INT, default=None, help="default: the preset's")
    cm.add_argument("--eval-size", type=EVAL_SIZE, default=None, help="held-out images scored (default: the preset's)")
    cm.add_argument("--threads", type=POSITIVE_INT, default=2)
    cm.add_argument("--device", type=_device, default=DEFAULT_DEVICE)
    cm.add_argument("--quiet", action="store_true", help="no progress bars")
    cm.set_defaults(func=compare_methods)

    s1 = commands.add_parser("stage1", help="train and evaluate a stage 1 alone (any --method, any dataset)")
    _common(s1, defaults=True)
    s1.add_argument("--steps", type=POSITIVE_INT, default=300_000, help="number of steps")
    s1.add_argument("--minutes", type=POSITIVE, default=None, help="stop training after this many minutes")
    s1.set_defaults(func=stage1)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # no page faults on every step's buffers (see training.keep_freed_memory)
    with flush_denormals():  # training and evaluation (see training.flush_denormals)
        args.func(args)


if __name__ == "__main__":
    main()
