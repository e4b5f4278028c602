"""Two learner processes under torchrun (gloo, CPU): different shards, identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from links_testkit import make_record

from tandem.protocol.messages import record_to_message
from tandem.protocol.wire import decode, encode
from tandem.value.replay import ReplayStore


def test_two_gloo_ranks_end_with_identical_parameters(tmp_path):
    store = ReplayStore(tmp_path / "replay")
    for i in range(1, 41):
        store.offer(decode([bytes(f) for f in encode(record_to_message(make_record("a", 0, i), i, "s"))], copy=True))
    store.close()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "tandem.cli", "learn", f"learner.store_dir={tmp_path}", "learner.experience_port=0",
        "learner.weights_port=0", "learner.max_updates=6", "learner.min_records=8", "learner.batch_size=4",
        "learner.device=cpu", "learner.checkpoint_every_updates=3", "learner.publish_every_updates=3",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
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
