"""How a training step runs, kept out of the loop body: device, precision, memory format,
compilation and distributed wrapping. The loop calls :meth:`Runtime.prepare` once and steps inside
:meth:`Runtime.autocast`; everything that changes how fast a step runs lives here."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import ArgumentError
from ..devices import pick_device  # noqa: F401  (re-exported)

PRECISIONS = ("fp32", "bf16")


@dataclass
class Runtime:
    """Where and how steps run. ``precision`` ``"bf16"`` runs forward and loss under bfloat16
    autocast (weights, gradients and optimiser state stay float32); ``channels_last`` stores
    activations NHWC; ``compile`` wraps the stepped module in ``torch.compile`` (on one CUDA
    device in ``reduce-overhead`` mode: forward and backward replayed as CUDA graphs, which removes
    the per-kernel launch cost that bounds a narrow network's small-batch steps) and asks for
    batches of one shape (:attr:`fixed_shapes`: the last partial training batch is left out, so
    nothing recompiles); ``ddp`` wraps it in DistributedDataParallel (the process group must
    already be initialised)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    ddp: bool = False
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ArgumentError(f"unknown `precision` {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.sync_bn and (self.device.type != "cuda" or not self.ddp):
            raise ArgumentError("`sync_bn` synchronises batch norm across CUDA processes: it needs torchrun and CUDA devices")

    @classmethod
    def default(cls, device: torch.device, precision: str | None = None, compile: bool | None = None,
                ddp: bool = False, sync_bn: bool = False) -> "Runtime":
        """The defaults: fp32 everywhere, channels-last on CUDA; bf16 and compile only when asked.

        Measured on an H200 (ResNet-56 SDN, batch 128, benchmarks/bench_train.py): bf16 autocast
        alone made steps slower (3,114 against 3,358 images/s: the network is launch-bound at that
        batch and autocast adds casts), while data on the device (1.48x) and channels-last (1.33x)
        each paid, and fp32 with both ran 5,739 against the baseline's 4,465 images/s (9.7 s per
        epoch); torch.compile gained 13 % per step but recompiled for the last partial batch (one
        epoch: 135 s). See docs/reproduction.md. Compiled runs now leave that batch out and, on one
        CUDA device, replay forward and backward as CUDA graphs: not yet measured on a GPU, so
        compile stays opt-in.
        """
        cuda = device.type == "cuda"
        return cls(device, precision or "fp32", channels_last=cuda, compile=bool(compile), ddp=ddp, sync_bn=sync_bn)

    @property
    def fixed_shapes(self) -> bool:
        """Whether training batches must all have one shape (compiled steps): drop the last partial one."""
        return self.compile

    @property
    def fused_optimizer(self) -> bool:
        """Fused optimiser kernels: on CUDA (the per-tensor launches of an eager optimiser step are
        a visible share of a small network's step there)."""
        return self.device.type == "cuda"

    @property
    def cuda_graphs(self) -> bool:
        """Compiled steps replayed as CUDA graphs: one CUDA device, no DDP (whose gradient hooks run
        between the backward's kernels)."""
        return self.compile and self.device.type == "cuda" and not self.ddp

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "fused_optimizer": self.fused_optimizer, "drop_last": self.fixed_shapes,
                "ddp": self.ddp, "sync_bn": self.sync_bn}

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` here (in place) and return the module to call for training steps."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        stepped: nn.Module = model
        if self.sync_bn:  # replaces the BN modules inside ``model`` (same parameters and buffers)
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # ic-only freezes the backbone: its parameters get no gradient, which DDP must be told
            stepped = DistributedDataParallel(model, device_ids=ids,
                                              find_unused_parameters=any(not p.requires_grad for p in model.parameters()))
        if self.compile:
            stepped = torch.compile(stepped, mode="reduce-overhead" if self.cuda_graphs else None)
        return stepped

    def step_begin(self) -> None:
        """Before each training step: with CUDA graphs, tell the graph trees a new step begins, so
        the previous step's graph outputs may be overwritten (nothing keeps them)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def end_epoch(self, model: nn.Module) -> None:
        """After an epoch's steps: replicas share rank 0's BN statistics (DDP only)."""
        if self.ddp:
            from ..distributed import broadcast_buffers

            broadcast_buffers(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a forward pass."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
