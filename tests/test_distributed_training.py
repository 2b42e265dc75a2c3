"""Data-parallel training (``fit(..., process_group=...)``) with two CPU processes (gloo): the
ranks share one model throughout, the neighbour table included, and a run resumed from its
checkpoint is the uninterrupted run, weight for weight."""
import pytest
import torch

from gloo_ranks import on_ranks

from msvae.data import DSprites
from msvae.models import MultiStageModel
from msvae.models.training import RandomBatches

RANKS = 2


def images():
    return DSprites().images(torch.arange(64) * 10_000).float()


def small_model():
    torch.manual_seed(0)
    model = MultiStageModel.for_images(4, stage2="vae", w_dim=3, kl_warmup=2,
                                       stage1_options=dict(width=8, hidden=32))
    centre = model.stage2.centre
    centre.keys, centre.values = centre.keys[:48].clone(), centre.values[:48].clone()
    centre.key_norms = centre.key_norms[:48].clone()  # a 48-row table keeps the test fast
    return model


def train(out, group, stops):
    """For each ``(stage-1 steps, stage-2 steps)`` in ``stops`` a fresh process's fit (a new
    model, resuming from the checkpoints in ``out``, as after a kill); the last state dict and
    history."""
    for stage1_steps, stage2_steps in stops:
        model = small_model()
        model.fit(images(), stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch_size=8,
                  checkpoint_dir=out, checkpoint_every=2, log_every=1, progress=False, seed=3,
                  process_group=group)
    return {k: v.clone() for k, v in model.state_dict().items()}, model.history


def _rank(rank, group, out):
    batches = RandomBatches(torch.arange(40.0)[:, None], 8, torch.Generator().manual_seed(1),
                            shard=(rank, RANKS))
    return {"rows": torch.cat([next(batches) for _ in range(6)]).flatten(),
            "straight": train(f"{out}/straight", group, [(4, 4)]),
            "resumed": train(f"{out}/resumed", group, [(2, 0), (4, 2), (4, 4)])}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return on_ranks(_rank, RANKS, tmp_path_factory.mktemp("data_parallel"))


def test_shards_split_the_one_process_batches_without_overlap(ranks):
    one = RandomBatches(torch.arange(40.0)[:, None], 8, torch.Generator().manual_seed(1))
    batches = [next(one).flatten() for _ in range(6)]
    for b, batch in enumerate(batches):
        shards = [r["rows"][4 * b:4 * b + 4] for r in ranks]
        assert torch.equal(torch.cat(shards), batch)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        RandomBatches(torch.zeros(10, 1), 5, torch.Generator(), shard=(0, 2))


def test_ranks_hold_one_model_and_table(ranks):
    weights = [r["straight"][0] for r in ranks]
    assert weights[0]["stage2.centre.filled"] == 48
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    untrained = small_model().state_dict()
    assert not torch.equal(weights[0]["stage1.encoder.head.4.weight"], untrained["stage1.encoder.head.4.weight"])


def _terms(history):
    """The logged terms of each stage (not the seconds: each rank has its clock)."""
    return {stage: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
            for stage, rows in history.items()}


def test_history_is_the_global_batch_mean_on_every_rank(ranks):
    histories = [_terms(r["straight"][1]) for r in ranks]
    assert histories[0] == histories[1]
    assert [h["step"] for h in histories[0]["stage1"]] == [1, 2, 3, 4]


def test_a_resumed_two_process_run_is_the_uninterrupted_run(ranks):
    for r in ranks:
        straight, resumed = r["straight"][0], r["resumed"][0]
        for name, value in straight.items():
            assert torch.equal(value, resumed[name]), name
        assert _terms(r["straight"][1]) == _terms(r["resumed"][1])
