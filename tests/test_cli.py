"""The msvae command at test size."""
import json
from pathlib import Path

import pytest

from msvae.cli import main


def test_stage1_run_folder_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["stage1", "--out", str(out), "--steps", "4", "--batch-size", "8", "--eval-size", "200",
            "--latent-dim", "3", "--quiet", "--checkpoint-every", "2"]
    main(args)
    for name in ("config.json", "stage1.pt", "model.pt", "history.json", "metrics.json",
                 "reconstructions.png", "traversals.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["held_out_images"] == 200
    assert metrics["stage1"]["bce"] > 0 and metrics["stage1"]["mse"] > 0
    assert 0.0 <= metrics["mig"] <= 1.0 and len(metrics["kl_per_dim"]) == 3
    main([*args[:4], "6", *args[5:]])  # same folder, more steps: resumes at step 4
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert json.loads((out / "config.json").read_text())["steps"] == 6


FIT = ["--stage1-steps", "3", "--stage2-steps", "3", "--batch-size", "8", "--eval-size", "100",
       "--latent-dim", "3", "--w-dim", "2", "--quiet", "--checkpoint-every", "2",
       "--classifier-steps", "5"]


def test_fit_eval_traverse_sample(tmp_path, capsys):
    out = tmp_path / "run"
    main(["fit", "--out", str(out), "--preset", "quick", *FIT])
    for name in ("config.json", "stage1.pt", "stage2.pt", "model.pt", "history.json", "metrics.json",
                 "reconstructions.png", "traversals.png", "traversals_stage1.png", "samples.png",
                 "samples_stage1.png"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["stage1_steps"] == 3 and config["stage2_steps"] == 3 and config["kl_warmup"] == 500
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == {"stage1": 3, "stage2": 3} and metrics["held_out_images"] == 100
    for stage in ("stage1", "full"):
        assert metrics[stage]["bce"] > 0 and metrics[stage]["mse"] > 0
        assert metrics["nll_bound"][stage]["nats"] > 0
    assert metrics["nll_bound"]["bound"] == "elbo"
    assert len(metrics["w_kl_per_dim"]) == 2 and 0.0 <= metrics["mig"] <= 1.0
    samples = metrics["samples"]
    assert set(samples["frechet_distance"]) == {"stage1", "full"}
    assert set(samples["coverage_tv"]["full"]) == set(samples["classifier_accuracy"]) == {
        "shape", "scale", "orientation", "pos_x", "pos_y"}
    assert set(metrics["w_leak"]["of_z"]) == set(metrics["w_leak"]["z_accuracy"]) == set(
        samples["classifier_accuracy"])
    assert set(metrics["w_leak"]["captured"]) | set(metrics["w_leak"]["missed"]) == set(
        samples["classifier_accuracy"])
    assert {"stage1", "full", "dims"} <= set(metrics["traversal_fidelity"])
    main(["fit", "--out", str(out), *FIT[:3], "5", *FIT[4:]])  # more stage-2 steps: resumes
    assert json.loads((out / "metrics.json").read_text())["steps"] == {"stage1": 3, "stage2": 5}

    fit_metrics = (out / "metrics.json").read_text()
    main(["eval", str(out), "--eval-size", "40"])  # its own folder; the fit's record stays
    assert json.loads((out / "eval" / "metrics.json").read_text())["held_out_images"] == 40
    assert (out / "metrics.json").read_text() == fit_metrics
    assert (out / "eval" / "samples.png").read_bytes() == (out / "samples.png").read_bytes()  # seeded
    capsys.readouterr()
    main(["traverse", str(out), "--index", "1", "--steps", "4"])
    assert capsys.readouterr().out.strip() == str(out / "traversal_1.png")
    main(["sample", str(out), "-n", "5", "--png", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")


def test_fit_with_flow_stage2(tmp_path):
    out = tmp_path / "flow"
    main(["fit", "--out", str(out), "--stage2", "flow", *FIT, "--eval-size", "20"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["full"]["exact_inverse"] and "full_over_stage1" not in metrics
    assert metrics["nll_bound"]["bound"] == "dequantized" and metrics["nll_bound"]["full"]["bits_per_dim"] > 0


def test_fit_with_gan_stage2(tmp_path):
    out = tmp_path / "gan"
    main(["fit", "--out", str(out), "--stage2", "gan", *FIT, "--eval-size", "20"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nll_bound"]["full"] is None and metrics["nll_bound"]["bound"] == "not tractable"
    assert metrics["full"]["bce"] > 0 and "frechet_distance" in metrics["samples"]
    main(["fit", "--out", str(out), "--stage2", "gan", *FIT[:3], "5", *FIT[4:], "--eval-size", "20"])
    assert json.loads((out / "metrics.json").read_text())["steps"] == {"stage1": 3, "stage2": 5}


def test_fit_with_mixture_stage2(tmp_path):
    out = tmp_path / "mog"
    main(["fit", "--out", str(out), "--stage2", "mog", "--components", "3", *FIT, "--eval-size", "20"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nll_bound"]["bound"] == "exact" and "full_over_stage1" in metrics
    assert json.loads((out / "config.json").read_text())["components"] == 3
    for name in ("samples.png", "traversals.png", "reconstructions.png"):
        assert (out / name).exists()


def test_commands_refuse_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="is not a run folder"):
        main(["eval", str(tmp_path)])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="model.pt is not an msvae model file"):
        main(["eval", str(tmp_path)])


def test_seed_makes_a_fit_reproducible_and_a_changed_rerun_keeps_the_record(tmp_path):
    import torch

    from msvae.models import MultiStageModel

    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        main(["fit", "--out", str(out), *FIT, "--eval-size", "20", "--seed", "3"])
    first, second = (MultiStageModel.load(out / "model.pt") for out in runs)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in first.history["stage2"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in second.history["stage2"]]
    config = (runs[0] / "config.json").read_text()
    from msvae.models.training import resolve_precision

    assert json.loads(config)["precision"] == resolve_precision("auto", "cpu")  # recorded as resolved
    with pytest.raises(SystemExit, match=r"other settings \(beta: 6.0 there, 4.0 now\)"):
        main(["fit", "--out", str(runs[0]), *FIT, "--eval-size", "20", "--seed", "3", "--beta", "4"])
    assert (runs[0] / "config.json").read_text() == config
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["train_seconds"] == pytest.approx(
        first.history["stage1"][-1]["seconds"] + first.history["stage2"][-1]["seconds"])


@pytest.mark.parametrize("argv, message", [
    (["fit", "--stage1-minutes", "nan"], "--stage1-minutes: must be a finite number > 0, got 'nan'"),
    (["fit", "--stage2-minutes", "-1"], "--stage2-minutes: must be a finite number > 0"),
    (["fit", "--eval-size", "0"], "--eval-size: must be an integer >= 20"),
    (["fit", "--eval-size", "5"], "--eval-size: must be an integer >= 20"),
    (["fit", "--batch-size", "0"], "--batch-size: must be an integer > 0"),
    (["fit", "--held-out", "1.5"], "--held-out: must be in \\(0, 1\\)"),
    (["fit", "--beta", "inf"], "--beta: must be a finite number >= 0"),
    (["fit", "--threads", "0"], "--threads: must be an integer > 0"),
    (["fit", "--device", "nonsense"], "--device: not a torch device"),
    (["fit", "--precision", "fp16"], "--precision: invalid choice: 'fp16'"),
    (["stage1", "--steps", "-1"], "--steps: must be an integer > 0"),
    (["traverse", "RUN", "--steps", "0"], "--steps: must be an integer > 1"),
    (["traverse", "RUN", "--span", "nan"], "--span: must be a finite number > 0"),
    (["sample", "RUN", "--temperature", "nan"], "--temperature: must be a finite number >= 0"),
    (["sample", "RUN", "-n", "0"], "-n: must be an integer > 0"),
    (["compare-tables", "--epochs", "-1"], "--epochs: must be an integer > 0"),
])
def test_bad_values_are_one_line_errors_before_any_work(tmp_path, capsys, argv, message):
    import re

    argv = [a.replace("RUN", str(tmp_path)) for a in argv]
    if argv[0] in ("fit", "stage1", "compare-tables"):
        argv += ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_and_unusable_out_folders(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["fit", "--out", str(tmp_path / "run"), "--device", "cuda"])
        assert "no usable CUDA GPU (use --device cpu)" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="exists and is not a folder"):
        main(["fit", "--out", str(tmp_path / "file"), *FIT])
    unwritable = Path("/proc/msvae-test/run")  # nobody, root included, can create this
    with pytest.raises(SystemExit, match="cannot write to --out /proc/msvae-test/run"):
        main(["fit", "--out", str(unwritable), *FIT])


def test_compare_tables_writes_scores_and_figures(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    from msvae import tabular_benchmark
    from msvae.metrics.tabular import dcr_baseline_protection

    out = tmp_path / "tables"
    main(["compare-tables", "--out", str(out), "--tables", "wine", "--seeds", "0", "1",
          "--synthesizers", "msvae", "--epochs", "1", "--min-steps", "1"])
    everything = json.loads((out / "rows.json").read_text())
    reference = [r for r in everything if r["synthesizer"] == "real_held_out"]
    rows = [r for r in everything if r["synthesizer"] != "real_held_out"]
    assert [(r["synthesizer"], r["seed"]) for r in rows] == [("msvae", 0), ("msvae_stage1", 0),
                                                             ("msvae", 1), ("msvae_stage1", 1)]
    for row in rows:
        assert 0 <= row["quality"] <= 1 and 0 <= row["privacy"] <= 1 and row["fit_seconds"] > 0
    # the test split's own DCR, per seed: the reference a synthesizer's privacy is read against
    df, discrete, _ = tabular_benchmark.load_table("wine")
    train, test = tabular_benchmark.split(df)
    assert [(r["seed"], r["rows"]) for r in reference] == [(0, len(test)), (1, len(test))]
    expected = dcr_baseline_protection(train, test, discrete, seed=1)["score"]
    assert reference[1]["privacy"] == pytest.approx(expected) and 0 < expected < 1
    summary = (out / "summary.md").read_text()
    assert summary.count("| wine |") == 3 and "±" in summary
    for name in ("wine_marginals.png", "wine_association_difference.png", "wine_factors.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    factors = (out / "wine_factors.csv").read_text().splitlines()
    assert factors[0] == "factor,column,effect,change" and len(factors) == 1 + 8 * 14
    for row in rows:
        assert row["held_out_nll"] is not None and 0 <= row["sdmetrics_quality"] <= 1
        assert 0 <= row["overfitting_protection"] <= 1 and 0 <= row["sdmetrics_overfitting_protection"] <= 1
    assert rows[0]["held_out_nll"] < rows[1]["held_out_nll"] + 1.0  # the full model's bound, then stage 1's
    main(["compare-tables", "--out", str(out), "--tables", "wine", "--seeds", "0", "1",
          "--synthesizers", "msvae", "--epochs", "1", "--min-steps", "1"])  # a rerun resumes: nothing is fitted again
    assert json.loads((out / "rows.json").read_text()) == everything
    with pytest.raises(ValueError, match="unknown or unavailable synthesizers"):
        main(["compare-tables", "--out", str(out), "--tables", "wine", "--synthesizers", "gan"])


def test_equal_time_peers_get_msvaes_fit_time_and_the_copula_runs(tmp_path):
    pytest.importorskip("pandas")
    from msvae import tabular_benchmark

    rows = [{"table": "t", "seed": 0, "synthesizer": "msvae", "fit_seconds": 30.0},
            {"table": "t", "seed": 0, "synthesizer": "ctgan", "fit_seconds": 120.0},
            {"table": "t", "seed": 0, "synthesizer": "real_held_out", "privacy": 0.3}]  # no fit
    assert tabular_benchmark._equal_time_epochs(rows, "t", 0, "ctgan", 300) == 75
    assert tabular_benchmark._equal_time_epochs(rows[:1] + [{**rows[1], "fit_seconds": 1e6}], "t", 0, "ctgan", 300) == 1
    with pytest.raises(ValueError, match="needs msvae and tvae fitted first"):
        tabular_benchmark._equal_time_epochs(rows, "t", 0, "tvae", 300)
    pytest.importorskip("sdv")
    df, discrete, _ = tabular_benchmark.load_table("wine")
    synthetic = tabular_benchmark.GaussianCopula(0).fit(df, discrete).sample(50)
    assert list(synthetic.columns) == list(df.columns) and len(synthetic) == 50


def test_compare_tables_reads_a_users_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    from msvae.data.tables import load_adult

    load_adult().head(300).to_csv(tmp_path / "mine.csv", index=False)
    out = tmp_path / "csv"
    args = ["compare-tables", "--out", str(out), "--tables", str(tmp_path / "mine.csv"), "--seeds", "0",
            "--synthesizers", "msvae", "--epochs", "1", "--min-steps", "1"]
    with pytest.raises(ValueError, match="a CSV table needs target="):
        main(args)
    main([*args, "--target", "income", "--discrete", "education_num"])
    rows = json.loads((out / "rows.json").read_text())
    assert {r["table"] for r in rows} == {"mine"}
    assert [r["ml_metric"] for r in rows if r["synthesizer"] == "msvae"] == ["f1"]
    assert (out / "mine_marginals.png").exists()
    assert pd.read_csv(out / "mine_factors.csv").shape[1] == 4


def test_compare_stage2_runs_every_class_on_one_stage1(tmp_path, capsys):
    out = tmp_path / "compare"
    main(["compare-stage2", "--out", str(out), "--minutes", "0.01", "--stage1-steps", "3",
          "--eval-size", "20", "--classifier-steps", "5", "--quiet"])
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["stage2"] for r in rows] == ["vae", "flow", "gan", "mog"]
    assert all(r["steps"] >= 1 for r in rows)
    assert rows[1]["exact_inverse"] and rows[2]["nll_bound_nats"]["full"] is None
    assert len({r["bce"]["stage1"] for r in rows}) == 1  # one stage 1 for all
    table = capsys.readouterr().out
    assert table.count("\n| ") == 5 and "(exact inverse)" in table
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    for kind in ("vae", "flow", "gan", "mog"):
        assert (out / kind / "model.pt").exists() and (out / kind / "metrics.json").exists()


def _torchrun(args, **popen):
    """``torchrun --standalone --nproc_per_node 2 -m msvae.cli ARGS`` as a subprocess."""
    import os
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "msvae.cli", *args],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def _kill_all(launcher, out):
    """kill -9 of torchrun and of its workers (each in a session of its own: torchrun's doing),
    found by their command lines naming ``out``; returns when all are gone."""
    import os
    import signal
    import time
    pids = {launcher.pid}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.wait()
    while any(_alive(pid) for pid in pids - {launcher.pid}):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (exists and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_fit_under_torchrun_resumes_after_a_kill_and_evaluates(tmp_path):
    """Two processes (gloo): killed -9 in stage 1, rerun, finished, evaluated; a rerun with
    another number of processes is refused."""
    import time

    from msvae.models.training import load_checkpoint

    out = tmp_path / "run"
    args = ["fit", "--out", str(out), "--preset", "quick", *FIT[4:]]
    args[args.index("--checkpoint-every") + 1] = "10"
    args += ["--stage1-steps", "400", "--stage2-steps", "3"]
    first = _torchrun(args)
    deadline = time.monotonic() + 300
    while True:
        state = load_checkpoint(out / "stage1.pt") if (out / "stage1.pt").exists() else None
        if state is not None and state["step"] >= 20:
            _kill_all(first, out)
            break
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()
        time.sleep(0.05)
    killed_at = state["step"]
    assert 20 <= killed_at < 400 and not (out / "model.pt").exists()
    second = _torchrun(args)
    assert second.wait(timeout=600) == 0, second.stderr.read().decode()
    config = json.loads((out / "config.json").read_text())
    assert config["processes"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == {"stage1": 400, "stage2": 3}
    history = json.loads((out / "history.json").read_text())
    steps = [h["step"] for h in history["stage1"]]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # one log across the kill
    assert len(load_checkpoint(out / "stage1.pt")["ranks_rng"]) == 2
    main(["eval", str(out), "--eval-size", "40"])
    assert json.loads((out / "eval" / "metrics.json").read_text())["held_out_images"] == 40
    with pytest.raises(SystemExit, match="processes"):  # one process would train another model
        main(args)
