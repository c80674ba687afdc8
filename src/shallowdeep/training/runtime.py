"""How a training step runs, kept out of the loop body: device, precision, memory format,
compilation and distributed wrapping. The loop calls :meth:`Runtime.prepare` once and steps inside
:meth:`Runtime.autocast`; everything that changes how fast a step runs lives here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..compute.devices import native_bf16, pick_device  # noqa: F401  (pick_device re-exported)
from ..core.errors import ArgumentError
from ..core.io import JSONObject

PRECISIONS = ("fp32", "bf16")
COMPILE_BACKENDS = ("inductor", "cudagraphs")
# training steps after which compiling a run's step pays for its compilation (see Runtime.default)
COMPILE_PAYBACK_STEPS = 2_500


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
    compile_auto: bool = False  # compile chosen by :meth:`default`, not asked for
    # "inductor" (generated, fused kernels) or "cudagraphs" (CUDA graphs of the unfused ops: no code
    # generation, so seconds instead of a minute of compilation; bench_train measures both)
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ArgumentError(
                f"unknown `compile_backend` {self.compile_backend!r}: choose one of {', '.join(COMPILE_BACKENDS)}"
            )
        if self.precision not in PRECISIONS:
            raise ArgumentError(f"unknown `precision` {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.sync_bn and (self.device.type != "cuda" or not self.ddp):
            raise ArgumentError(
                "`sync_bn` synchronises batch norm across CUDA processes: it needs torchrun and CUDA devices"
            )

    @classmethod
    def default(
        cls,
        device: torch.device,
        precision: str | None = None,
        compile: bool | None = None,
        ddp: bool = False,
        sync_bn: bool = False,
        steps: int | None = None,
    ) -> Runtime:
        """The defaults: bf16 autocast on a GPU that computes in bf16 natively (:func:`native_bf16`),
        fp32 elsewhere; channels-last on CUDA; compiled (CUDA graphs) on one CUDA device when the run
        has at least :data:`COMPILE_PAYBACK_STEPS` training ``steps``, the measured point where
        compiling pays for itself.

        Measured on an H100 (ResNet-56 SDN, CIFAR-10 shape, batch 128, benchmarks/bench_train.py,
        2026-11-26): eager fp32 with data on the device and channels-last steps 3,200-4,000 images/s
        (10.5-11.5 s per epoch with validation); compiled with CUDA graphs 13,600 images/s (3.26 s per
        epoch) after 55 s of compilation, i.e. 22.5 ms saved per step: paid back after about 2,500
        steps (7 epochs). bf16 autocast on top: 14,100 images/s, 2.82 s per epoch, half the peak
        memory; the whole paper recipe in bf16 ended 0.07 points from fp32 on the same seed (CNN
        test accuracy 87.38 % against 87.45 %, 2026-11-27), so bf16 is the CUDA default, as issue 10
        asked. Eager at batch 128 bf16 is slower than fp32 (its casts are extra launches in a
        launch-bound step; H200, 2026-11-26): ``precision="fp32"`` for an eager small-network run.
        The CPU stays fp32 (a resume there replays bit for bit). An automatically chosen
        compilation falls back to eager for what the compiler cannot handle (a model it fails on
        still trains); one asked for explicitly fails loudly. See docs/reproduction.md.
        """
        cuda = device.type == "cuda"
        auto = compile is None
        if auto:
            compile = cuda and not ddp and steps is not None and steps >= COMPILE_PAYBACK_STEPS
        precision = precision or ("bf16" if native_bf16(device) else "fp32")
        return cls(
            device,
            precision,
            channels_last=cuda,
            compile=bool(compile),
            ddp=ddp,
            sync_bn=sync_bn,
            compile_auto=auto and bool(compile),
        )

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

    def describe(self) -> JSONObject:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_auto": self.compile_auto,
            "compile_backend": self.compile_backend,
            "cuda_graphs": self.cuda_graphs,
            "fused_optimizer": self.fused_optimizer,
            "drop_last": self.fixed_shapes,
            "ddp": self.ddp,
            "sync_bn": self.sync_bn,
        }

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
            stepped = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=any(not p.requires_grad for p in model.parameters())
            )
        if self.compile:
            if self.compile_auto:  # the default must not stop a run the compiler cannot handle: eager instead
                import torch._dynamo as dynamo

                dynamo.config.suppress_errors = True
            if self.compile_backend == "cudagraphs":
                stepped = torch.compile(stepped, backend="cudagraphs")
            else:
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
            from ..compute.distributed import broadcast_buffers

            broadcast_buffers(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a forward pass."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
