"""Run by test_distributed.py under torchrun: a few DDP steps of a tiny model with gloo on CPU."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import emt_frames  # noqa: E402
from so2nn.models import EquiformerV2Config  # noqa: E402
from so2nn.training import Trainer, TrainingConfig  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    model_config = EquiformerV2Config.tiny(
        max_neighbors=12, grid_resolution=None, alpha_drop=0.1, drop_path_rate=0.05
    )
    config = TrainingConfig(
        max_steps=6, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=3, checkpoint_every=3, log_every=1
    )
    trainer = Trainer(model_config, emt_frames(12, 0), emt_frames(5, 1), config, out, progress=False)
    metrics = trainer.fit()
    rank = trainer.dist.rank
    torch.save(
        {
            "params": [p.detach() for p in trainer.model.parameters()],
            "metrics": metrics,
            "world_size": trainer.dist.world_size,
        },
        out / f"rank{rank}.pt",
    )
    trainer.close()


if __name__ == "__main__":  # pytest's --doctest-modules imports this file: run only as a script
    main()
