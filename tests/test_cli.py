"""The msvae command at test size."""
import json

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
    assert set(metrics["w_leak"]["captured"]) | set(metrics["w_leak"]["missed"]) == set(
        samples["classifier_accuracy"])
    assert {"stage1", "full", "dims"} <= set(metrics["traversal_fidelity"])
    main(["fit", "--out", str(out), *FIT[:3], "5", *FIT[4:]])  # more stage-2 steps: resumes
    assert json.loads((out / "metrics.json").read_text())["steps"] == {"stage1": 3, "stage2": 5}

    main(["eval", str(out), "--eval-size", "40"])
    assert json.loads((out / "metrics.json").read_text())["held_out_images"] == 40
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


def test_commands_refuse_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="is not a run folder"):
        main(["eval", str(tmp_path)])


def test_compare_tables_writes_scores_and_figures(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    out = tmp_path / "tables"
    main(["compare-tables", "--out", str(out), "--tables", "wine", "--seeds", "0", "1",
          "--synthesizers", "msvae", "--epochs", "1"])
    rows = json.loads((out / "rows.json").read_text())
    assert [(r["synthesizer"], r["seed"]) for r in rows] == [("msvae", 0), ("msvae_stage1", 0),
                                                             ("msvae", 1), ("msvae_stage1", 1)]
    for row in rows:
        assert 0 <= row["quality"] <= 1 and 0 <= row["privacy"] <= 1 and row["fit_seconds"] > 0
    summary = (out / "summary.md").read_text()
    assert summary.count("| wine |") == 2 and "±" in summary
    for name in ("wine_marginals.png", "wine_association_difference.png", "wine_factors.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    factors = (out / "wine_factors.csv").read_text().splitlines()
    assert factors[0] == "factor,column,effect,change" and len(factors) == 1 + 8 * 14
    with pytest.raises(ValueError, match="unknown or unavailable synthesizers"):
        main(["compare-tables", "--out", str(out), "--tables", "wine", "--synthesizers", "gan"])


def test_compare_tables_reads_a_users_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    from msvae.data.tables import load_adult

    load_adult().head(300).to_csv(tmp_path / "mine.csv", index=False)
    out = tmp_path / "csv"
    args = ["compare-tables", "--out", str(out), "--tables", str(tmp_path / "mine.csv"), "--seeds", "0",
            "--synthesizers", "msvae", "--epochs", "1"]
    with pytest.raises(ValueError, match="a CSV table needs target="):
        main(args)
    main([*args, "--target", "income", "--discrete", "education_num"])
    rows = json.loads((out / "rows.json").read_text())
    assert {r["table"] for r in rows} == {"mine"} and rows[0]["ml_metric"] == "f1"
    assert (out / "mine_marginals.png").exists()
    assert pd.read_csv(out / "mine_factors.csv").shape[1] == 4
