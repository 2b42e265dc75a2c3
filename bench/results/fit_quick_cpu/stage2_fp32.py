"""Stage 2 of the quick preset in float32 on the bf16 run's stage 1 (runs/quick13d): the accuracy
cost of bf16 for stage 2, measured on one stage 1."""
import json, shutil, time, torch
from pathlib import Path
from torch.utils.data import Subset
torch.set_num_threads(1)
from msvae import cli
from msvae.models import MultiStageModel
from msvae.models.training import flush_denormals
config = json.load(open("runs/quick13d/config.json"))
out = Path("runs/quick13f"); out.mkdir(exist_ok=True)
ds, tr, te, ev = cli._data(config)
torch.manual_seed(config["seed"])
model = MultiStageModel.for_images(config["latent_dim"], stage2="vae", **cli.stage2_options(config))
model.stage1 = MultiStageModel.load("runs/quick13d/model.pt").stage1
t = time.time()
with flush_denormals():
    model.stage2.fit(model.stage1, Subset(ds, tr.tolist()), steps=config["stage2_steps"], lr=config["stage2_lr"],
                     batch_size=config["batch_size"], checkpoint_dir=out, progress=False, seed=config["seed"],
                     precision="fp32")
    print("stage 2 fp32 seconds", time.time() - t, flush=True)
    model.save(out / "model.pt")
    r = cli._evaluate(model, ds, tr, te, ev, config["seed"], progress=False)
(out / "metrics.json").write_text(json.dumps(r, indent=1))
print("bce", r["full_over_stage1"], "nll", r["nll_bound"]["full_over_stage1"], "FD", r["samples"]["frechet_distance"], "trav", r["traversal_fidelity"])
print("of_z", r["w_leak"]["of_z"])
