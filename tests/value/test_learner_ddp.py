"""Two learner processes under torchrun (gloo, CPU): different shards, identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from links_testkit import make_record

from tandem.protocol.messages import delivered_message
from tandem.value.replay import ReplayStore


def fill_store(root, records) -> ReplayStore:
    """A replay store at ``root / "replay"`` holding ``records`` (seqs 1..n of one stream), still open."""
    store = ReplayStore(root / "replay")
    for seq, rec in enumerate(records, start=1):
        store.offer(delivered_message(rec, seq, "s"))
    return store


def torchrun_learn(store_dir, overrides: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``tandem learn`` on two gloo ranks under torchrun (CPU, one thread each)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "tandem.cli", "learn", f"learner.store_dir={store_dir}", "learner.experience_port=0",
        "learner.weights_port=0", "learner.min_records=8", "learner.device=cpu", *overrides,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def mixed_records() -> list:
    """4 episodes of 10 chunks, every other chunk with a takeover."""
    return [make_record("a", (i - 1) // 10, (i - 1) % 10, intervention=i % 2 == 0) for i in range(1, 41)]


def test_two_gloo_ranks_end_with_identical_parameters(tmp_path):
    fill_store(tmp_path, [make_record("a", 0, i) for i in range(1, 41)]).close()
    torchrun_learn(tmp_path, ["learner.max_updates=6", "learner.batch_size=4", "learner.checkpoint_every_updates=3",
                              "learner.publish_every_updates=3"], timeout=180)
    summaries = [json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and all(s["world_size"] == 2 for s in summaries)
    assert all(s["step"] == 6 for s in summaries)
    # each rank trained on its own shard (different losses) and DDP kept the parameters identical
    assert summaries[0]["metrics"]["loss"] != summaries[1]["metrics"]["loss"]
    digests = {json.dumps(s["params_sha256"], sort_keys=True) for s in summaries}
    assert len(digests) == 1 and summaries[0]["params_sha256"]["critic"]
    main = next(s for s in summaries if s["rank"] == 0)
    assert main["versions"] == {"critic": 2}  # only rank 0 publishes
    assert (tmp_path / "checkpoints" / "ckpt-00000006.pt").exists()


def test_two_gloo_ranks_train_the_edit_objective_on_every_buffer(tmp_path):
    """The edit objective (critic + EXPO head) under torchrun: each rank's shard mixes the autonomous and the
    takeover buffer (a contiguous shard gave rank 0 only autonomous records and rank 1 only takeovers)."""
    fill_store(tmp_path, mixed_records()).close()
    torchrun_learn(tmp_path, ["learner.max_updates=4", "learner.batch_size=8", "learner.checkpoint_every_updates=2",
                              "learner.publish_every_updates=2", "learner.objective.type=edit",
                              "++learner.objective.critic.hidden=[32,32]", "++learner.objective.head.hidden=[32,32]",
                              "++learner.objective.critic_objective.warmup_steps=0"], timeout=300)
    summaries = [json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["step"] == 4 for s in summaries)
    assert all(s["metrics"]["critic/weight_frac"] > 0 for s in summaries)  # chunks with successors: TD targets
    for s in summaries:  # half of each sampled batch is takeovers (ratios 0.25/0.25 over the non-empty buffers)
        assert s["metrics"]["critic/takeover_frac"] == 0.5, s["metrics"]
        assert "head/loss" in s["metrics"]
    digests = {json.dumps(s["params_sha256"], sort_keys=True) for s in summaries}
    assert len(digests) == 1 and set(summaries[0]["params_sha256"]) == {"head", "critic"}


def test_the_strided_shard_gives_every_rank_each_buffer_of_a_replay_batch(tmp_path):
    """The replay hands a batch over buffer by buffer; a contiguous split would not mix them, the shard does."""
    import numpy as np

    from tandem.value.ddp import DistInfo, shard

    store = fill_store(tmp_path, mixed_records())
    batch = store.sample(16, np.random.default_rng(0))
    store.close()
    takeover = batch["intervention"].any(axis=1)
    assert not takeover[:8].any() and takeover[8:].all()  # buffer by buffer: a contiguous half holds one buffer
    for world in (2, 4):
        for rank in range(world):
            part = shard(batch, DistInfo(rank=rank, world_size=world))
            assert len(part["state"]) == 16 // world
            assert part["intervention"].any(axis=1).mean() == 0.5, (world, rank)
