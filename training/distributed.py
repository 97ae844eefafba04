"""Data parallelism under torchrun: every helper that asks torch.distributed anything lives here.

    relaunch(nproc, ["train", ...])   # `brainstacks train --nproc N`: the same command in N processes (torchrun)
    init_from_env(device)             # each of them: join the process group (nccl on CUDA, gloo on CPU)
    rank, size = world()              # (0, 1) when not distributed
    shard(order)                      # this rank's slice of an epoch's order
    average_gradients(params)         # all-reduce and divide by the world size, after backward
    barrier()                         # rank 0 writes the bundle while the others wait here

Without a process group (one process, the default) every helper is a no-op, so the loops call them unconditionally.
`brainstacks train --nproc N` relaunches itself through torchrun (`relaunch`); rank 0 alone writes the bundle and
trains the router (training/curriculum.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def relaunch(nproc: int, args: list[str]) -> None:
    """Run `python -m training ARGS` in `nproc` processes through torchrun (a standalone rendezvous on this host)."""
    from torch.distributed.run import main as torchrun

    torchrun([f"--nproc_per_node={nproc}", "--standalone", "-m", "training", *args])


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); nothing in a single process."""
    if env_world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def local_device(device: str) -> str:
    """This rank's CUDA device (cuda:LOCAL_RANK) under torchrun; `device` unchanged otherwise."""
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def destroy() -> None:
    """Leave the process group, if one was joined (teardown only: errors are ignored)."""
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # teardown only
        pass


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(order: Sequence[T]) -> list[T]:
    """This rank's slice of `order` (every world-th item); all of it when the slice would be empty."""
    rank, size = world()
    return list(order[rank::size]) or list(order)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce every gradient and divide by the world size (no-op in a single process)."""
    _, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= size
