import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun, 2 CPU processes, gloo: gradients are averaged (weights stay identical across
    ranks), the data is split between ranks, rank 0 alone writes checkpoints and logs, and
    the validation metrics are reduced over both ranks' shards."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
         str(tmp_path)],
        capture_output=True, text=True, timeout=3600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread per process, whatever the caller's environment says
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 6 and len(checkpoint["rng"]) == 2
    # 12 structures, 2 per batch per process -> 3 steps per epoch
    assert checkpoint["epoch"] == 1 and checkpoint["batch_in_epoch"] == 3
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 6, "rank 0 alone logs, once per step"
    assert (tmp_path / "model.pt").exists()
