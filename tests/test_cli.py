"""The msvae command at test size."""
import json

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
