"""Data parallelism under torchrun: every helper that asks torch.distributed anything lives here.

    relaunch(nproc, ["train", ...])   # `brainstacks train --nproc N`: the same command in N processes (torchrun)
    init_from_env(device)             # each of them: join the process group (nccl on CUDA, gloo on CPU)
    rank, size = world()              # (0, 1) when not distributed
    shard(order)                      # this rank's slice of an epoch's order
    average_gradients(params)         # all-reduce and divide by the world size, after backward
    average_gradients(params, tokens=n)   # the same, weighted by each rank's loss tokens (a global token mean)
    barrier()                         # rank 0 writes the bundle while the others wait here

Without a process group (one process, the default) every helper is a no-op, so the loops call them unconditionally.
`brainstacks train --nproc N` relaunches itself through torchrun (`relaunch`); rank 0 alone writes the bundle and
trains the router (training/curriculum.py).

Under NCCL each rank first selects its GPU (`torch.cuda.set_device(LOCAL_RANK)`), so collectives and tensors of
rank r live on cuda:r and not all on cuda:0.

*Barriers.* While rank 0 saves a domain or trains the router (minutes to hours on a real base) the other ranks
wait in `barrier()`. The default process group's timeout (30 min for gloo, 10 for NCCL in recent torch) would kill
them, so barriers run on a gloo group of their own whose timeout is BRAINSTACKS_BARRIER_TIMEOUT seconds (default
BARRIER_TIMEOUT_S = 24 h). Gradient all-reduces keep the default group and its short timeout, so a rank that dies
mid-training is still noticed quickly.

*Gradient averaging.* `average_gradients(params)` averages the ranks' gradients: with every rank's loss a mean over
its own tokens, that equals one process's gradient on the global batch only when the ranks hold equal token
counts. `tokens=n` (this rank's loss-token count) weights rank r by n_r / sum(n), which equals the global batch's
token-mean gradient for any split (tests/training/test_ddp.py checks both against one process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

BARRIER_TIMEOUT_S = 24 * 3600  # default seconds a rank waits in barrier() (BRAINSTACKS_BARRIER_TIMEOUT overrides)
_wait_group: dist.ProcessGroup | None = None  # the barriers' gloo group (init_from_env)


def barrier_timeout() -> timedelta:
    """How long barrier() waits: BRAINSTACKS_BARRIER_TIMEOUT seconds, or BARRIER_TIMEOUT_S."""
    return timedelta(seconds=float(os.environ.get("BRAINSTACKS_BARRIER_TIMEOUT", BARRIER_TIMEOUT_S)))


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
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU) and the barriers' group (module
    docstring); under NCCL select this rank's GPU first. Nothing in a single process."""
    global _wait_group
    if env_world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        _wait_group = dist.new_group(backend="gloo", timeout=barrier_timeout())


def local_device(device: str) -> str:
    """This rank's CUDA device (cuda:LOCAL_RANK) under torchrun; `device` unchanged otherwise."""
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def destroy() -> None:
    """Leave the process group, if one was joined (teardown only: errors are ignored)."""
    global _wait_group
    _wait_group = None
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
    """Wait for every rank, up to barrier_timeout() (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=_wait_group)


def shard(order: Sequence[T]) -> list[T]:
    """This rank's slice of `order` (every world-th item); all of it when the slice would be empty."""
    rank, size = world()
    return list(order[rank::size]) or list(order)


def average_gradients(params: Sequence[torch.nn.Parameter], tokens: float | int | torch.Tensor | None = None) -> None:
    """All-reduce every gradient and divide by the world size, or, given `tokens` (this rank's loss-token count),
    weight each rank by its share of all ranks' tokens (module docstring). No-op in a single process."""
    _, size = world()
    if size == 1:
        return
    weight, total = 1.0, float(size)
    if tokens is not None:
        n = torch.tensor([float(tokens)], dtype=torch.float64)
        weight = float(n)
        dist.all_reduce(n, op=dist.ReduceOp.SUM)
        total = float(n)
    for p in params:
        if p.grad is not None:
            if weight != 1.0:
                p.grad *= weight
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= max(total, 1e-12)
