"""The training loop a user relies on: a kill -9 at any moment loses at most a minute, resumption
is exact, logs are quiet when not on a terminal, and model files that are not ours are refused."""
import collections
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from msvae.models import DisentangledVAE, MultiStageModel, TabularSynthesizer
from msvae.models.training import EarlyStopping, load_checkpoint, run_steps, train_resumably

# Stage 1 and a stage 2 on random vectors, checkpointing every 0.2 s (by time: 10,000 steps).
CHILD = """
import sys, torch
torch.set_num_threads(1)
from msvae.data.tabular import Span
from msvae.models import DisentangledVAE, TabularVAEStage2
out = sys.argv[1]
data = torch.randn(512, 4, generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)
stage1 = DisentangledVAE.for_vectors(4, 2, (16,), likelihood="gaussian")
stage2 = TabularVAEStage2([Span(c, "scalar", i, 1) for i, c in enumerate("abcd")], w_dim=2, hidden=16)
common = dict(batch_size=32, checkpoint_dir=out, checkpoint_every=10**9, checkpoint_seconds=0.2,
              progress=False, log_every=7)
stage1.fit(data, steps=int(sys.argv[2]), **common)
stage2.fit(stage1, data, steps=int(sys.argv[3]), **common)
torch.save({"stage1": stage1.state_dict(), "stage2": stage2.state_dict(),
            "history": [stage1.history, stage2.history]}, out + "/final.pt")
"""
STEPS = ("1500", "1500")


def _child(tmp_path, out):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(out), *STEPS], stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})


def _kill_when(process, path, step):
    """kill -9 ``process`` once the checkpoint ``path`` has reached ``step``; returns its step."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = load_checkpoint(path) if path.exists() else None
        if state is not None and state["step"] >= step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return state["step"]
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("the child never reached the checkpoint")


def test_kill_9_in_either_stage_loses_little_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    assert _child(tmp_path, straight).wait() == 0
    killed = tmp_path / "killed"
    first = _kill_when(_child(tmp_path, killed), killed / "stage1.pt", 300)
    assert 300 <= first < 1500 and not (killed / "stage2.pt").exists()  # killed in stage 1
    child = _child(tmp_path, killed)
    second = _kill_when(child, killed / "stage2.pt", 300)
    assert 300 <= second < 1500  # killed in stage 2
    assert _child(tmp_path, killed).wait() == 0
    a, b = (torch.load(path / "final.pt", weights_only=True) for path in (straight, killed))
    for part in ("stage1", "stage2"):
        for name, value in a[part].items():
            assert torch.equal(value, b[part][name]), (part, name)
    for stage_a, stage_b in zip(a["history"], b["history"]):  # the same log, with the time trained
        assert [{k: v for k, v in h.items() if k != "seconds"} for h in stage_a] == [
            {k: v for k, v in h.items() if k != "seconds"} for h in stage_b]
        assert all(h["seconds"] > 0 for h in stage_b)


def test_checkpoints_by_time_and_quiet_logs_off_a_terminal(capsys):
    calls = []
    history = run_steps(lambda step: (time.sleep(0.01), {"loss": float(step)})[1], start=0, steps=30,
                        history=[], log_every=10, checkpoint=lambda step, pending: calls.append(step),
                        checkpoint_every=10**9, checkpoint_seconds=0.05, progress=True, desc="toy",
                        log_seconds=0.1)
    assert len(calls) >= 4 and calls[-1] == 30  # by time, and at the end
    assert [h["step"] for h in history] == [10, 20, 30]
    err = capsys.readouterr().err  # pytest's stderr is not a terminal: plain lines, no bar
    lines = err.strip().splitlines()
    assert "\r" not in err and 1 <= len(lines) <= 6 and lines[-1].startswith("toy: step 30/30 (100%)")


def test_time_limit_says_when_it_bites(capsys):
    run_steps(lambda step: (time.sleep(0.02), {"loss": 1.0})[1], start=0, steps=10**6, history=[],
              time_limit=0.3, desc="stage 1", log_seconds=0.1)
    err = capsys.readouterr().err
    assert "stage 1: stopped by its time limit at step" in err
    first = err.splitlines()[0]  # the budget, not the 10^6-step cap, sets the share and the ETA
    assert "(0%)" not in first and "ETA 0:00:00" in first


@pytest.mark.parametrize("load", [DisentangledVAE.load, MultiStageModel.load, TabularSynthesizer.load])
def test_files_that_are_not_msvae_models_are_refused_clearly(tmp_path, load):
    good = tmp_path / "good.pt"
    DisentangledVAE.for_vectors(3, 2, (8,)).save(good)
    data = good.read_bytes()
    cases = {"empty": b"", "truncated": data[:len(data) // 2], "garbage": b"not a model " * 20}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not an msvae model file"):
            load(tmp_path / name)
    torch.save({"config": collections.OrderedDict(a=pathlib.PurePosixPath("x"))}, tmp_path / "code")
    with pytest.raises(ValueError, match="refused for safety") as error:
        load(tmp_path / "code")
    assert "weights_only" not in str(error.value)
    torch.save({"something": torch.ones(2)}, tmp_path / "other")  # a torch file of something else
    with pytest.raises(ValueError, match="other is not an msvae model file of this kind"):
        load(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")
    if load is DisentangledVAE.load:
        assert load(good).latent_dim == 2


def test_early_stopping_keeps_the_starting_weights_when_every_step_is_worse():
    """The weights before the first step are a candidate (a nested stage 2's: stage 1 itself)."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-1.0)

    def step(index):
        with torch.no_grad():
            model.weight.fill_(float(index + 1))
        return {"loss": 1.0}

    stopper = EarlyStopping(model, lambda: float(model.weight.detach()), every=2, patience=3)
    train_resumably(step, path=None, resume=False, states={"model": model}, settings={},
                    generator=torch.Generator(), history=[], steps=100, monitor=stopper, progress=False)
    assert stopper.checks == [[0, -1.0], [2, 2.0], [4, 4.0], [6, 6.0]]
    assert stopper.stopped and stopper.best_step == 0
    assert float(model.weight.detach()) == -1.0


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience(capsys):
    model = torch.nn.Linear(1, 1, bias=False)
    scores = iter([5.0, 3.0, 4.0, 2.0, 2.5, 2.1, 3.0, 1.0])  # best 2.0 at step 8, then 3 worse

    def step(index):
        with torch.no_grad():
            model.weight.fill_(float(index + 1))
        return {"loss": 1.0}

    stopper = EarlyStopping(model, lambda: next(scores), every=2, patience=3)
    run_steps(step, start=0, steps=100, history=[], monitor=stopper, desc="toy")
    assert stopper.checks == [[2, 5.0], [4, 3.0], [6, 4.0], [8, 2.0], [10, 2.5], [12, 2.1], [14, 3.0]]
    assert stopper.stopped and stopper.best_step == 8 and stopper.best == 2.0
    assert "toy: stopped early at step 14 of 100" in capsys.readouterr().err
    stopper.restore()
    assert float(model.weight.detach()) == 8.0  # the weights after step 8
    resumed = EarlyStopping(torch.nn.Linear(1, 1, bias=False), lambda: 0.0, every=2, patience=3)
    resumed.load_state_dict(stopper.state_dict())
    resumed.restore()
    assert float(resumed.module.weight.detach()) == 8.0 and resumed.stopped
    with pytest.raises(ValueError, match="every and patience"):
        EarlyStopping(model, lambda: 0.0, every=0, patience=1)
    with pytest.raises(FloatingPointError, match="held-out score is nan"):
        EarlyStopping(model, lambda: float("nan"), every=1, patience=1)(1)
