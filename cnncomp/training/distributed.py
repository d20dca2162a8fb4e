"""Data-parallel training with torch.distributed: the process group, the ranks, and a local launcher.

A run takes part in a process group when its environment says so, as torchrun sets it (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or a submitit job with several tasks (one per GPU
under SLURM), whose variables `submitit.helpers.TorchDistributedEnvironment` exports. Without one,
`spawn` starts one process per device on this machine with the same variables. The group uses NCCL
on CUDA and gloo on the CPU; gradients are averaged by `DistributedDataParallel` (Li et al.,
"PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the group."""

    rank: int
    local_rank: int
    world_size: int


def environment() -> DistEnv | None:
    """The distributed environment this process runs in, or None for a single process.

    torchrun's variables win; in a submitit job with several tasks (and none of them set), they are
    exported from the job's own environment first (SLURM task ids, first host as master, loopback
    for a one-node job). A world of one is no group."""
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # every task sees all the node's GPUs; LOCAL_RANK picks one (see `process_group`)
        job = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if job.local_world_size == job.world_size:  # one node: meet on loopback, needing no name lookup
            os.environ["MASTER_ADDR"] = "127.0.0.1"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    env = DistEnv(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    return env if env.world_size > 1 else None


def _submitit_tasks() -> int:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 1
    import submitit

    return submitit.JobEnvironment().num_tasks


def rank() -> int:
    """This process's global rank (0 for a single process)."""
    env = environment()
    return 0 if env is None else env.rank


def world_size() -> int:
    """The number of processes training together (1 for a single process)."""
    env = environment()
    return 1 if env is None else env.world_size


def is_main() -> bool:
    """True on rank 0, the one process that writes checkpoints, records and logs."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the process group for the duration (NCCL on CUDA, gloo on the CPU) and yield this
    rank's device: `cuda:LOCAL_RANK` on CUDA. Without a distributed environment, yields `device`."""
    env = environment()
    if env is None:
        yield device
        return
    if device.type == "cuda":
        # LOCAL_RANK indexes the node's GPUs; where the cluster binds one GPU per task, it is cuda:0
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if not _active():
        return
    if dist.get_backend() == "nccl":  # NCCL's barrier runs on a device: this rank's, not a guess
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (`t` itself for a single process): metric sums such as
    (loss·n, correct, n), so that every rank computes the same means."""
    if not _active():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (`obj` itself for a single process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's persistent buffers (BatchNorm running statistics) to every rank.

    DDP runs without its buffer sync in every forward (`wrap`): the fixed transform bases are
    (non-persistent) buffers too, the same on every rank, and for large FC layers bigger than the
    gradients. Rank 0's statistics are what its checkpoints hold; evaluating on every rank needs
    them there."""
    if not _active():
        return
    state = module.state_dict()  # persistent buffers only; its tensors share the buffers' storage
    for name, _ in module.named_buffers():
        if name in state:
            dist.broadcast(state[name], src=0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when in a process group, else `model` itself. The wrapped
    module stays `model`: checkpoints, evaluation and fold keep using it."""
    if not _active():
        return model
    ddp = nn.parallel.DistributedDataParallel
    # no buffer sync in every forward (see `broadcast_buffers`); the option's name since torch 2.14
    sync = (
        "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    )
    ids = [device.index] if device.type == "cuda" else None
    return ddp(model, device_ids=ids, **{sync: False})


def free_port() -> int:
    """A TCP port free on this machine right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[..., Any], nprocs: int, args: tuple = ()) -> None:
    """Run `fn(*args)` in `nprocs` new processes on this machine, each with torchrun's environment
    (RANK = LOCAL_RANK = 0 … nprocs-1, WORLD_SIZE, MASTER_ADDR/PORT on localhost); returns when all
    have ended. A process that raises ends the others and raises here (torch.multiprocessing); an
    exception in this process (a signal turned into one, a launcher's SystemExit) ends them too,
    before it propagates, so that what this process records after it is the last word."""
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    if environment() is not None:
        raise ValueError(f"spawn inside a distributed environment (RANK={os.environ['RANK']}) would nest groups")
    context = torch.multiprocessing.start_processes(
        _worker, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=False, daemon=True, start_method="spawn"
    )
    try:
        while not context.join():
            pass
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join(timeout=60)
            if process.is_alive():  # stuck in a collective whose peer is gone
                process.kill()
                process.join()


def _worker(local_rank: int, fn: Callable[..., Any], nprocs: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: the ranks must not each take every core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    fn(*args)
