"""Stage 1 of the quick preset (4,400 steps, batches without replacement as in ef00d08) for one seed and initial logvar bias (0: torch default); prints MIG on 2,000 held-out. Run on ef00d08: python stage1_mig_by_initialisation.py SEED INIT."""
import sys, time, json, torch, numpy as np
from torch.utils.data import Subset
from msvae.models.training import keep_freed_memory, flush_denormals
keep_freed_memory(); torch.set_num_threads(1)
import msvae.models.networks as nets
seed, init = int(sys.argv[1]), float(sys.argv[2])
nets.INITIAL_LOGVAR = init
_orig_init = nets.ConvEncoder.__init__
def _init(self, *a, **k):
    if init != 0.0:
        return _orig_init(self, *a, **k)
    keep = torch.nn.init.constant_  # 0 = the start before ef00d08: the Linear's own bias draw
    torch.nn.init.constant_ = lambda t, v: t
    try:
        _orig_init(self, *a, **k)
    finally:
        torch.nn.init.constant_ = keep
nets.ConvEncoder.__init__ = _init
from msvae import cli, metrics
from msvae.models import DisentangledVAE
config = {**cli.PRESETS["quick"], "seed": seed, "held_out": 0.1, "dsprites": None}
dataset, train_idx, test_idx, eval_idx = cli._data(config)
torch.manual_seed(seed)
m = DisentangledVAE.for_images(10)
t = time.perf_counter()
with flush_denormals():
    m.fit(Subset(dataset, train_idx.tolist()), loss=cli._stage1_loss(config, len(train_idx)), steps=config["stage1_steps"],
          batch_size=64, lr=config["lr"], penalty_warmup=config["warmup"], progress=False, seed=seed, precision="bf16", log_every=100)
    x = dataset.images(eval_idx)
    with torch.no_grad():
        mu = torch.cat([m.encoder(x[i:i + 500])[0] for i in range(0, len(x), 500)])
factors = dataset.factors(eval_idx)
print(json.dumps({"seed": seed, "init": init, "minutes": (time.perf_counter() - t) / 60,
                  "mig": float(metrics.mig(mu.numpy(), factors)),
                  "recon": [round(h["recon"], 1) for h in m.history[::8]]}), flush=True)
