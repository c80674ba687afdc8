"""Distributed data parallelism under torchrun: process group, rank, reductions and gathers.

``torchrun --nproc_per_node N -m shallowdeep train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them (NCCL on CUDA, gloo on the CPU).
Each rank takes a disjoint shard of every epoch (:class:`~shallowdeep.data.Batches` ``shard``),
DistributedDataParallel all-reduces the gradients, validation is sharded and its counts summed,
and only rank 0 prints and writes the run folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from ..core.errors import UserError
from ..core.torchrun import torchrun_place


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process prints and writes (rank 0)."""
        return self.rank == 0


def from_env() -> Dist:
    """The place torchrun gave this process (one process alone when it set nothing)."""
    return Dist(*torchrun_place())


def setup(device_type: str) -> Dist:
    """Join the process group torchrun set up (once); a single process needs none."""
    d = from_env()
    if d.enabled and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:  # set by torchrun; a hand-made WORLD_SIZE alone would end in torch's traceback
            raise UserError(
                f"WORLD_SIZE is {d.world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "not set: start the processes with torchrun (it sets them), or unset WORLD_SIZE for one "
                "process"
            )
        if device_type == "cuda":
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return d


def join(device: str) -> tuple[Dist, str]:
    """Join torchrun's group (when there is one) for work on ``device``: this process's place and
    its device (under torchrun each rank has its own GPU, ``cuda:LOCAL_RANK``)."""
    place = setup(device.split(":")[0])
    if place.enabled and device.startswith("cuda"):
        device = f"cuda:{place.local_rank}"
    return place, device


def current() -> Dist:
    """The place of this process in an initialised group (or alone)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), torchrun_place()[2])
    return Dist()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank (``t`` itself when alone)."""
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_equal(value: str) -> list[str]:
    """Every rank's ``value`` (on every rank): to check that ranks agree."""
    if not current().enabled:
        return [value]
    out: list[str] = [""] * current().world
    dist.all_gather_object(out, value)
    return out


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(status: int) -> NoReturn:
    """End a torchrun worker process with ``status`` once its command is done.

    Leaves the process group, flushes the output and exits without the interpreter's teardown
    (``os._exit``). Why: gloo's worker threads outlive ``destroy_process_group``; one that drops a
    finished collective's tensors while the interpreter finalises needs the GIL, cannot have it, and
    the process aborts ("terminate called without an active exception", SIGABRT), so torchrun
    reports a finished, fully written run as failed (seen in CI, and here in 1 of about 110
    two-process runs). Every file the tool writes is complete (atomic renames) before this point;
    nothing is left for teardown to do.
    """
    shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left or a closed stream: nothing more to say
            pass
    os._exit(status)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics): each rank updated its own from its
    shard during the epoch, so validation and the saved weights would otherwise differ by rank."""
    if current().enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def gather_rows(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's ``t`` (rank r's has ``sizes[r]`` rows, the other dims equal), on every rank:
    padded to one size for ``all_gather`` and cut back (tensors only; nothing is pickled)."""
    if not current().enabled:
        return [t]
    m = max(sizes)
    pad = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=t.device)
    pad[: t.shape[0]] = t
    out = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(out, pad)
    return [o[:n] for o, n in zip(out, sizes)]
