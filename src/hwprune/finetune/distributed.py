"""Data-parallel training on PyTorch's own engine: one process per device, started by `torchrun`.

`torchrun --nproc_per_node N ...` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in each process's
environment; `setup` joins the process group from them (gloo on CPU, nccl on CUDA). Without those
variables everything here is a no-op for one process, so the same code runs either way.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

#: How long a rank waits for the others. Rank 0 prunes before anyone trains (the closed loop: minutes for the
#: demo, over an hour for a large model on a slow target) while the other ranks wait in a broadcast; torch's
#: default of 30 minutes would end such a run.
WAIT = timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, and the device it trains on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prunes, measures latency and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """This process's rank and the world size: from the process group once joined, else the environment."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


def setup(device: str = "cpu") -> World:
    """Join the process group torchrun described (idempotent); one process without torchrun.

    `device` is where training runs: "cuda" picks nccl and this process's GPU (LOCAL_RANK), anything
    else gloo.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return world()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=WAIT)
    atexit.register(teardown)
    return world()


def teardown() -> None:
    """Leave the process group together: a rank that tears gloo down while another still sends aborted
    ("terminate called without an active exception", exit -6) in a test of 2 processes."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(minutes=10))
        else:
            dist.barrier()
    except RuntimeError:  # a rank died: leave anyway
        pass
    dist.destroy_process_group()


def broadcast_bytes(blob: bytes, device: str = "cpu") -> bytes:
    """Rank 0's `blob` on every rank (as a uint8 tensor: nothing is pickled); `blob` is ignored elsewhere.

    Rank 0 sends b"" when it failed (its own error is raised there): the other ranks get b"" instead of
    waiting for a broadcast that never comes.
    """
    w = world()
    if not w.distributed:
        return blob
    dev = torch.device("cuda", torch.cuda.current_device()) if device.startswith("cuda") else torch.device("cpu")
    size = torch.tensor([len(blob) if w.main else 0], dtype=torch.int64, device=dev)
    dist.broadcast(size, 0)
    if not size.item():
        return b""
    buf = torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    if w.main:
        buf.copy_(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy().tobytes())


def all_reduce_sum(values: list[float], device: str = "cpu") -> list[float]:
    """The element-wise sum of `values` over all ranks (one process: `values` itself)."""
    if not world().distributed:
        return list(values)
    dev = torch.device("cuda", torch.cuda.current_device()) if device.startswith("cuda") else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier() -> None:
    if world().distributed:
        dist.barrier()
