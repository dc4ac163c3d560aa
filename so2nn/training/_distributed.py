"""torchrun / DistributedDataParallel plumbing, kept out of the training loop."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run.

    Started by ``torchrun``, the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
    :meth:`~DistributedContext.from_env` then joins the process group (NCCL on CUDA, gloo on CPU).

    Example:
        >>> context = DistributedContext.from_env("cpu")     # not started by torchrun: one process
        >>> context.world_size, context.rank, context.is_main
        (1, 0, True)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> DistributedContext:
        """The context of this process: a single process unless ``WORLD_SIZE > 1`` (torchrun),
        in which case it joins the process group on ``device`` ("cpu" or "cuda")."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if device.startswith("cuda"):
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend)
        return cls(rank, world_size, local_rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """``cuda`` means this process's GPU (``LOCAL_RANK``) under torchrun."""
        if device == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return torch.device(device)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all processes (a copy; the input is left alone)."""
        if not self.distributed:
            return tensor.clone()
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        out = tensor.to(backend_device, copy=True)
        dist.all_reduce(out)
        return out.to(tensor.device)

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
