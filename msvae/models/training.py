"""Training utilities shared by the stages: endless random batches, checkpoints, the progress loop."""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from msvae.distributed import broadcast_object, gather_objects, rank_and_size

T = TypeVar("T")


class RandomBatches:
    """Endless batches ``[batch_size, ...]`` of rows drawn uniformly from ``data``.

    ``replacement=False``: each epoch is a fresh random permutation of the data (its seed drawn
    from ``generator``), cut into batches; the last ``N % batch_size`` rows of a permutation are
    left out, so ``batch_size = N`` gives the whole data every batch (what the minibatch TC
    estimators assume: distinct rows; with replacement ~37 % of a whole-table batch are repeats).
    ``replacement=True``: each batch ``batch_size`` independent draws (``torch.randint`` on
    ``generator``; on 663,552 dSprites images, repeats within a batch of 64 are rare). Image
    batches are channels-last (``image_layout``).

    ``data`` is a tensor ``[N, ...]`` or a map-style dataset; a dataset with ``__getitems__``
    (a list of indices -> the list of items, or one batch tensor) is asked for whole batches.
    Items are stacked; items that are tuples contribute their first element. ``state_dict`` /
    ``load_state_dict`` hold the epoch's seed and the position in it, so a resumed run (with
    ``generator``'s state restored too) continues the same stream.

    ``shard=(rank, ranks)`` (data parallelism): ``batch_size`` is the global batch; every rank
    draws the same global batch (``generator`` seeded alike on all ranks) and returns its own
    ``batch_size / ranks`` rows of it, so no row is on two ranks and the global stream is the
    one-process stream.
    """

    def __init__(self, data: Tensor | Dataset, batch_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu", replacement: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        if len(data) == 0:
            raise ValueError("data is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not replacement and batch_size > len(data):
            raise ValueError(f"batch_size ({batch_size}) must be at most the number of rows ({len(data)}) "
                             f"when drawing without replacement")
        rank, ranks = shard
        if batch_size % ranks:
            raise ValueError(f"batch_size ({batch_size}, the global batch) must be a multiple of "
                             f"the number of processes ({ranks})")
        self.data, self.batch_size, self.generator, self.device = data, batch_size, generator, device
        self.replacement = replacement
        self._rows = slice(rank * batch_size // ranks, (rank + 1) * batch_size // ranks)
        self._seed: int | None = None
        self._position = 0
        self._order: Tensor | None = None

    def __iter__(self) -> "RandomBatches":
        return self

    def _permute(self) -> None:
        self._order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self._seed))

    def __next__(self) -> Tensor:
        if self.replacement:
            return self._batch(torch.randint(len(self.data), (self.batch_size,), generator=self.generator)[self._rows])
        if self._seed is None or self._position + self.batch_size > len(self.data):
            self._seed, self._position = int(torch.randint(2**62, (), generator=self.generator)), 0
            self._permute()
        index = self._order[self._position:self._position + self.batch_size][self._rows]
        self._position += self.batch_size
        return self._batch(index)

    def _batch(self, index: Tensor) -> Tensor:
        if isinstance(self.data, Tensor):
            batch = self.data[index]
        else:
            items = (self.data.__getitems__(index.tolist()) if hasattr(self.data, "__getitems__")
                     else [self.data[i] for i in index.tolist()])
            batch = items if isinstance(items, Tensor) else torch.stack(
                [torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item) for item in items])
        return image_layout(batch.to(self.device, non_blocking=True).float())

    def state_dict(self) -> dict:
        return {"seed": self._seed, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self._seed, self._position = state["seed"], state["position"]
        if self._seed is not None:
            self._permute()


class EarlyStopping:
    """Model selection by a held-out score during training: every ``every`` steps ``score()``
    (lower is better, e.g. a validation negative log-likelihood) is computed; the weights of
    ``module`` at the best one are kept, and training stops after ``patience`` checks without a
    better one. ``restore()`` loads the kept weights. Its ``state_dict`` (the checks, the best
    score, its step and weights) goes into training checkpoints, so a resumed run selects as an
    uninterrupted one. ``checks``: ``[step, score]`` pairs.
    """

    def __init__(self, module: torch.nn.Module, score: Callable[[], float], every: int, patience: int):
        if every < 1 or patience < 1:
            raise ValueError(f"every and patience must be >= 1, got {every} and {patience}")
        self.module, self.score, self.every, self.patience = module, score, every, patience
        self.checks: list[list[float]] = []
        self.best, self.best_step, self.best_state, self.stopped = math.inf, 0, None, False

    def __call__(self, step: int) -> bool:
        """After training step ``step`` (1-based): checks when due; True when training should stop."""
        if step % self.every:
            return False
        value = float(self.score())
        if not math.isfinite(value):
            raise FloatingPointError(f"the held-out score is {value} at step {step}")
        self.checks.append([step, value])
        if value < self.best:
            self.best, self.best_step = value, step
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        elif sum(at > self.best_step for at, _ in self.checks) >= self.patience:
            self.stopped = True
        return self.stopped

    def restore(self) -> None:
        """Loads the weights at the best check (nothing when there was no check)."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"checks": self.checks, "best": self.best, "best_step": self.best_step,
                "best_state": self.best_state, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.checks, self.best, self.best_step = [list(c) for c in state["checks"]], state["best"], state["best_step"]
        self.best_state, self.stopped = state["best_state"], state["stopped"]


def adam(params, **options) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused implementation (one kernel for all the updates: 0.5 ms
    less per step of a 256-wide MLP VAE on 400 rows, one CPU thread) where every parameter allows
    it, else the default."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in
                                 (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                                 for p in params)
    return torch.optim.Adam(params, fused=fused, **options)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Writes ``state`` atomically (a crash mid-write never corrupts the previous checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The state saved at ``path`` or None when there is none. Loads tensors and plain containers
    only (``weights_only=True``): no pickled code runs. A file that holds code is refused, and any
    other file that is not an msvae file (empty, truncated, garbage) is a ``ValueError`` naming
    it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise ValueError(f"{path} was refused for safety: it contains pickled Python objects "
                             f"(code that would run on loading), which msvae files never do") from None
        raise ValueError(f"{path} is not an msvae model file (not a torch file of tensors)") from None
    except (RuntimeError, EOFError, KeyError, OSError, ValueError) as error:
        reason = str(error).split(".")[0] or type(error).__name__
        raise ValueError(f"{path} is not an msvae model file ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not an msvae model file (holds a {type(state).__name__}, not a dict)")
    return state


def build_from_file(path: str | os.PathLike, build: Callable[[dict], T]) -> T:
    """``build(state)`` of the msvae file at ``path`` (``load_checkpoint``): a missing file is a
    ``FileNotFoundError``; a state ``build`` cannot use (keys or shapes of something else) a
    ``ValueError`` naming the file."""
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"no model file at {path}")
    try:
        return build(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise ValueError(f"{path} is not an msvae model file of this kind "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"bf16"`` or ``"fp32"``: ``"auto"`` is bf16 where ``device`` computes bfloat16 natively (a
    CUDA GPU that supports it; a CPU with AMX tiles, e.g. Sapphire Rapids), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and torch.cpu._is_amx_tile_supported() else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The context for a training forward pass at ``precision`` (``"bf16"``: torch's autocast, so
    convolutions and matrix products compute in bfloat16; every msvae network returns float32, so
    losses, estimators and optimiser states stay float32; ``"fp32"``: nothing)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'bf16' or 'fp32' here, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def denormals_flushed() -> bool:
    """Whether the CPU now flushes subnormal floats to zero (``torch.set_flush_denormal``)."""
    return torch.tensor([1e-39]).mul(0.5).item() == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Subnormal floats flushed to zero on the CPU while inside (the previous mode restored after).
    Sigmoid means of saturated logits (``x1_mean`` of a binary image's background, ~1e-40) are
    subnormal, and arithmetic on them is slow: with them flushed the quick preset's stage-2 step
    took 234 ms instead of 433 ms, its neighbour search 18 ms instead of 267 ms. Values below
    1.2e-38 become 0, which no loss here can tell."""
    previous = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def keep_freed_memory() -> bool:
    """Has glibc's allocator keep freed blocks below 1 GiB for reuse instead of handing them
    back to the OS (``mallopt``: mmap threshold 1 GiB, no trimming); returns whether it could
    (False off glibc). A training step frees and reallocates the same activation buffers
    (MBs each); by default glibc maps the large ones afresh each time, and every page of them
    faults in again: the quick preset took 40 million page faults and 93 s of system time, a
    stage-1 step in ``fit`` 121 ms instead of 95 ms on this project's VM. Process-wide, so
    the CLI sets it for its own process; call it in yours to have the same."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD of malloc.h
    return bool(mallopt(mmap_threshold, 1 << 30)) and bool(mallopt(trim_threshold, 2**31 - 1))


def image_layout(x: Tensor) -> Tensor:
    """A batch of images ``[B, C, H, W]`` in channels-last memory order (the faster layout for
    oneDNN and cuDNN convolutions; values unchanged); anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def linear_warmup(step: int, warmup_steps: int) -> float:
    """0 -> 1 linearly over ``warmup_steps`` (1 throughout when ``warmup_steps`` is 0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def kl_penalty(kl_per_dim: Tensor, step: int, free_bits: float, warmup_steps: int) -> Tensor:
    """The KL term of a stage-2 ELBO at ``step``: weight ``linear_warmup(step, warmup_steps)`` on
    the batch-mean KL per dimension ``kl_per_dim [w_dim]``, each floored at a free-bits level that
    decays linearly from ``free_bits`` to 0 over the same steps. After the warm-up the KL is paid in
    full (weight 1, no floor): the objective is the ELBO of the model that is sampled."""
    ramp = linear_warmup(step, warmup_steps)
    floor = free_bits * (1.0 - ramp)
    return ramp * (kl_per_dim.clamp(min=floor) if floor > 0 else kl_per_dim).sum()


def train_resumably(step_fn: Callable[[int], dict[str, float]], *, path: str | os.PathLike | None,
                    resume: bool, states: dict, settings: dict, generator: torch.Generator,
                    history: list[dict], steps: int, time_limit: float | None = None,
                    extra: dict | None = None, process_group=None,
                    monitor: EarlyStopping | None = None, **loop) -> list[dict]:
    """``run_steps`` with exact resumption from, and periodic checkpoints to, the file ``path``.

    ``states`` maps names to objects with ``state_dict``/``load_state_dict`` (models, losses,
    optimisers; None entries are skipped). The checkpoint holds them, the step, the history, the
    RNG states (``generator``, torch's global and CUDA ones), the seconds trained so far,
    ``settings`` and ``extra``. Resuming a checkpoint written with other ``settings`` is a
    ``ValueError``; ``time_limit`` (seconds) counts the time of earlier runs too, so an
    interrupted time-limited stage finishes its budget and a completed one does not train again.
    With ``process_group`` (data parallelism) the group's first rank alone reads and writes the
    file (the others receive its contents, so several machines need no shared folder), the
    checkpoint holds every rank's torch/CUDA RNG states, and resuming with another number of
    processes is a ``ValueError``. ``monitor`` (``EarlyStopping``) is checked after every step,
    saved in the checkpoints, and its best weights are restored at the end (the starting weights,
    checked before the first step, among the candidates); it needs one process.
    ``loop`` goes to ``run_steps`` (log_every, checkpoint_every, checkpoint_seconds, progress, desc).
    """
    rank, ranks = rank_and_size(process_group)
    if monitor is not None and ranks > 1:
        raise ValueError("early stopping (monitor) runs in one process; train without process_group")
    states = {**states, "monitor": monitor}
    path = None if path is None else Path(path)
    start, trained, pending = 0, 0.0, None
    state = None
    if path is not None and resume:
        try:
            state = load_checkpoint(path) if rank == 0 else None
        except ValueError as error:
            state = error
        state = broadcast_object(state, process_group)
        if isinstance(state, ValueError):
            raise state
    if state is not None:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        if changed:
            raise ValueError(f"{path} was written with other settings ({', '.join(changed)}): "
                             f"{ {k: state['settings'].get(k) for k in changed} }; use another "
                             f"checkpoint_dir or resume=False")
        if len(state.get("ranks_rng", [None])) != ranks:
            raise ValueError(f"{path} was written by {len(state.get('ranks_rng', [None]))} process(es), "
                             f"this run has {ranks}; resume with as many or use another checkpoint_dir")
        missing = [name for name, obj in states.items() if obj is not None and name not in state]
        if missing:
            raise ValueError(f"{path} was written by another version of msvae (it holds no "
                             f"{', '.join(missing)}); use another checkpoint_dir or resume=False")
        for name, obj in states.items():
            if obj is not None:
                obj.load_state_dict(state[name])
        generator.set_state(state["generator"])
        rng = state["ranks_rng"][rank] if "ranks_rng" in state else state
        torch.set_rng_state(rng["torch_rng"])
        if torch.cuda.is_available() and rng["cuda_rng"]:
            torch.cuda.set_rng_state_all(rng["cuda_rng"])
        start, trained = state["step"], state.get("train_seconds", 0.0)
        history[:] = state["history"]
        pending = state.get("pending")
    began = time.monotonic()

    def checkpoint(step: int, pending: dict) -> None:
        rng = {"torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ranks_rng = gather_objects(rng, process_group)
        if rank != 0:
            return
        save_checkpoint(path, {
            **{name: obj.state_dict() if obj is not None else None for name, obj in states.items()},
            "generator": generator.get_state(), **rng, **({"ranks_rng": ranks_rng} if ranks > 1 else {}),
            "step": step, "history": history, "pending": pending, "settings": settings,
            "train_seconds": trained + time.monotonic() - began, **(extra or {})})

    if monitor is not None and start == 0 and not monitor.checks:
        monitor(0)  # the starting weights are a candidate too (a nested stage 2's: stage 1 itself)
    remaining = None if time_limit is None else time_limit - trained
    if (state is None or remaining is None or remaining > 0) and not (monitor and monitor.stopped):
        with flush_denormals():
            run_steps(step_fn, start=start, steps=steps, history=history, time_limit=remaining,
                      checkpoint=checkpoint if path is not None else None, seconds_before=trained,
                      pending=pending, process_group=process_group, monitor=monitor, **loop)
    if monitor is not None:
        monitor.restore()
    return history


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_steps(step_fn: Callable[[int], dict[str, float]], *, start: int, steps: int,
              history: list[dict], log_every: int = 50,
              checkpoint: Callable[[int, dict], None] | None = None, checkpoint_every: int = 1000,
              checkpoint_seconds: float = 60.0, progress: bool = True, desc: str = "training",
              time_limit: float | None = None, seconds_before: float = 0.0,
              log_seconds: float = 30.0, pending: dict | None = None,
              process_group=None, monitor: Callable[[int], bool] | None = None) -> list[dict]:
    """Calls ``step_fn(step)`` for step in [start, steps). Every ``log_every`` steps the mean of the
    returned terms is appended to ``history`` with the step and ``seconds`` (training time so far,
    ``seconds_before`` included). ``checkpoint(step, pending)`` runs every ``checkpoint_every``
    steps, every ``checkpoint_seconds`` of wall time, and at the end; ``pending`` (the sums of the
    terms not yet logged, and their count) is what a resumed run passes back, so its history is
    the uninterrupted one. With ``time_limit`` (seconds) training
    stops early, at the end of the step that reaches it, and says so. ``progress``: a bar on a
    terminal, one line every ``log_seconds`` otherwise (its share done and ETA count the time
    budget when that ends training first). Non-finite terms stop training with a
    ``FloatingPointError``. With ``process_group`` the terms are averaged over the ranks (the
    history is the global batch's), the first rank alone reports progress and decides, by its
    clock, when a checkpoint or the time limit is due, and every rank follows (one all-reduce of
    the terms and those two flags a step). ``monitor(done)`` (``EarlyStopping``) runs after every
    step, before its checkpoint; when it returns True training stops there and says so.
    """
    rank, ranks = rank_and_size(process_group)
    progress = progress and rank == 0
    began = time.monotonic()
    deadline = None if time_limit is None else began + time_limit
    last_checkpoint = last_line = began
    sums: dict[str, float] = dict((pending or {}).get("sums", {}))
    count = int((pending or {}).get("count", 0))
    terminal = progress and sys.stderr.isatty()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not terminal,
               dynamic_ncols=True)
    means: dict[str, float] = {}
    for step in bar:
        terms = step_fn(step)
        now = time.monotonic()
        out_of_time = deadline is not None and now >= deadline
        due = now - last_checkpoint >= checkpoint_seconds
        if ranks > 1:
            terms, out_of_time, due = _agree(terms, out_of_time and rank == 0, due and rank == 0,
                                             process_group)
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {bad} at step {step}: {terms}")
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        done = step + 1
        stop = monitor is not None and monitor(done)
        if done % log_every == 0 or done == steps or out_of_time or stop:
            means = {k: v / count for k, v in sums.items()}
            history.append({"step": done, **means, "seconds": seconds_before + now - began})
            bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k in ("loss", "recon", "kl", "tc")})
            sums, count = {}, 0
        if checkpoint is not None and (done % checkpoint_every == 0 or done == steps or out_of_time
                                       or due or stop):
            checkpoint(done, {"sums": sums, "count": count})
            last_checkpoint = time.monotonic()
        if progress and not terminal and (now - last_line >= log_seconds or done == steps):
            rate = (done - start) / max(now - began, 1e-9)
            left, share = (steps - done) / rate, done / steps
            if deadline is not None:  # a time budget ends it first: say when
                left = min(left, max(deadline - now, 0.0))
                share = max(share, (now - began) / time_limit)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in means.items())
            print(f"{desc}: step {done}/{steps} ({100 * share:.0f}%), {rate:.2f} it/s, "
                  f"ETA {_duration(left)}{', ' + shown if shown else ''}", file=sys.stderr, flush=True)
            last_line = now
        if out_of_time:
            if progress:
                bar.write(f"{desc}: stopped by its time limit at step {done} of {steps}", file=sys.stderr)
            break
        if stop:
            if progress:
                bar.write(f"{desc}: stopped early at step {done} of {steps}: the held-out score was "
                          f"best at step {monitor.best_step} ({monitor.best:.4g})", file=sys.stderr)
            break
    bar.close()
    return history


def _agree(terms: dict[str, float], out_of_time: bool, due: bool, group) -> tuple[dict[str, float], bool, bool]:
    """The ranks' mean terms, and whether any rank raised each flag (one all-reduce)."""
    ranks = rank_and_size(group)[1]
    values = torch.tensor([*terms.values(), float(out_of_time), float(due)], dtype=torch.float64)
    values = values.to(_collective_device(group))
    dist.all_reduce(values, group=group)
    values = values.cpu().tolist()
    return dict(zip(terms, (v / ranks for v in values[:-2]))), values[-2] > 0, values[-1] > 0


def _collective_device(group) -> torch.device:
    """Where the group's backend takes tensors: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
