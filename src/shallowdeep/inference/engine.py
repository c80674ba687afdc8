"""Real early-exit inference: every input stops at the first IC confident enough, in wall-clock time.

Two paths, with the same answers:

- ``batch-1``: one input at a time (NCHW memory), Python control flow between stages; the IC heads
  are folded for inference (few ops, see :func:`_inference_head`) and conv+BN pairs of the backbone
  are folded (on copies). On CUDA it runs one stage ahead (``pipelined``).
- the throughput engine (:meth:`EarlyExitEngine.stream`): a queue before each stage; a stage runs
  on full batches (channels-last memory, the heads' own pooling ops); inputs that exit leave, the
  rest join the next queue, and results come back in input order.

Every path makes its exit decision in one function, :meth:`EarlyExitEngine._decide`, from the
engine's :class:`~shallowdeep.core.exit_rule.ExitRule` (the numpy runtime's twin is
:func:`~shallowdeep.core.exit_rule.exit_scores`).

An input that no IC lets out pays for the whole SDN and gets the fallback's prediction: the most
confident output (``"most_confident"``, the reference's) or the final output (``"final"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.drift import ALPHA, WINDOW, DriftMonitor, ExitProfile
from ..core.errors import ArgumentError, NotCalibratedError
from ..core.exit_rule import ExitRule
from ..core.queues import take
from ..models.adapter import quiet
from ..models.costs import output_costs
from ..models.heads import ICHead, TokenHead
from ..models.layout import HWC
from ..models.sdn import SDN


@dataclass
class EngineResult:
    """Per input: ``predictions``, ``exits`` (output index; ``num_outputs - 1`` = no IC exit),
    ``confidence`` (max softmax of the output that answered), ``relative_cost`` (cost / CNN) and
    ``answered`` (the output whose prediction was returned: the exit, or for an input no IC let out
    the final output or, under the ``most_confident`` fallback, the IC it picked)."""

    predictions: torch.Tensor
    exits: torch.Tensor
    confidence: torch.Tensor
    relative_cost: torch.Tensor
    answered: torch.Tensor | None = None
    seconds: float | None = None  # :meth:`EarlyExitEngine.classify`'s wall time, the device synchronised

    def __len__(self) -> int:
        return len(self.predictions)


def _inference_head(head: nn.Module, scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """An :class:`ICHead` as a plain function for inference, with as few ops as we found (a
    :class:`TokenHead`: :func:`_inference_token_head`; any other head as itself).

    At batch 1 on a CPU each extra op costs far more between convolutions than alone (its code is
    cold), so the mixed pooling is two contiguous reductions per statistic and the mixing weight and
    the average's 1/r^2 are folded into two pre-transposed weight matrices:
    ``logits = (a W) max_r(x) + ((1 - a) / r^2 W) sum_r(x) + b``. ``scale`` (1 / temperature) is
    folded into W and b as well.
    """
    if isinstance(head, TokenHead):
        return _inference_token_head(head, scale)
    if not isinstance(head, ICHead):
        return _scaled(head, scale)
    w = head.linear.weight.detach() * scale
    b = head.linear.bias.detach().clone() * scale
    rh, rw = head.kernel
    if head.alpha is None or rh * rw == 1:  # no pooling, or 1x1 pooling (max = avg = the input itself)
        w_t = w.t().contiguous()
        return lambda x: torch.addmm(b, x.flatten(1), w_t)
    a = float(head.alpha.detach())
    w_max = (a * w).t().contiguous()
    w_sum = ((1 - a) / (rh * rw) * w).t().contiguous()

    def forward(x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        oh, ow = hh // rh, ww // rw
        if oh * rh != hh or ow * rw != ww:
            x = x[:, :, : oh * rh, : ow * rw].contiguous()
        else:
            x = x.contiguous()  # a channels-last map: the reductions below need NCHW memory
        v = x.reshape(n * c, oh * rh, ow, rw)  # reduce the contiguous last axis first, then the rows
        mx = v.amax(-1).view(n * c, oh, rh, ow).amax(2)
        sm = v.sum(-1).view(n * c, oh, rh, ow).sum(2)
        return torch.addmm(torch.addmm(b, sm.view(n, -1), w_sum), mx.view(n, -1), w_max)

    return forward


def _inference_token_head(head: TokenHead, scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A :class:`TokenHead` for batch 1: the LayerNorm's scale and shift folded into the linear layer
    (``W (g * n + b) + c = (W g) n + (W b + c)``, the mean commuting with both), and for the class
    token only that token normalised (LayerNorm is per token). ``scale`` is folded in as well."""
    w = head.linear.weight.detach()
    g, beta = head.norm.weight.detach(), head.norm.bias.detach()
    w_t = ((w * g) * scale).t().contiguous()
    b = (w @ beta + head.linear.bias.detach()) * scale
    dims, eps, p = (w.shape[1],), head.norm.eps, head.prefix
    if head.layout == HWC:
        return lambda x: torch.addmm(b, nn.functional.layer_norm(x, dims, eps=eps).mean((1, 2)), w_t)
    if head.pool == "cls":
        return lambda x: torch.addmm(b, nn.functional.layer_norm(x[:, 0], dims, eps=eps), w_t)
    return lambda x: torch.addmm(b, nn.functional.layer_norm(x, dims, eps=eps)[:, p:].mean(1), w_t)


# what the entry points take (see EarlyExitEngine.images)
Images = torch.Tensor | np.ndarray | str | Path | Sequence[str | Path]
IMAGES = "the engine takes uint8 RGB images [N, H, W, 3] (a tensor or a numpy array) or image paths"


def _channel_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``mean`` and ``std`` checked where they enter: both or neither, three finite numbers each, ``std`` > 0."""
    if mean is None and std is None:
        return None, None
    try:
        m, sd = tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ArgumentError(f"`mean` and `std` are three numbers each (RGB), got {mean!r} and {std!r}") from None
    if len(m) != 3 or len(sd) != 3 or not all(map(math.isfinite, m + sd)) or min(sd) <= 0:
        raise ArgumentError(f"`mean` and `std` are three finite numbers each (RGB; std > 0), got {m} and {sd}")
    return m, sd


def _scaled(head: nn.Module, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The head module itself (its pooling ops), its logits times ``scale`` (1 / temperature)."""
    if scale == 1.0:
        return head
    return lambda x: head(x) * scale


def _fold_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every conv → BN pair folded into one conv (torch.fx's fuser), or
    the module itself where it cannot be traced. Only for inference, in eval mode."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module
    try:
        return quiet(fuse(module, inplace=False))
    except Exception:  # an untraceable custom block keeps its BN; results are the same either way
        return module


class EarlyExitEngine:
    """Early-exit inference for an :class:`SDN` under an :class:`ExitRule` (its thresholds,
    temperatures and fallback). Build it once per model; the model is put in eval mode and must not
    change after."""

    def __init__(
        self,
        sdn: SDN,
        rule: ExitRule | float | Sequence[float],
        fallback: str | None = None,
        *,
        device: torch.device | str | None = None,
        fold_bn: bool = True,
        precision: str = "fp32",
        compile: bool = False,
        pipelined: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        profile: ExitProfile | None = None,
    ) -> None:
        """``rule``: a calibrated :class:`ExitRule`, or a max-softmax threshold (one for every IC, or
        one per IC) with its ``fallback`` (default ``most_confident``). The rule's temperatures
        divide the logits: folded into the IC heads' weights, applied to the final classifier's
        output. ``precision`` ``"bf16"`` runs the stages under bfloat16 autocast (decisions stay
        float32/64). ``compile`` compiles each stage (blocks and head) with ``torch.compile`` at
        fixed shapes; on CUDA in ``reduce-overhead`` mode, one CUDA graph per stage and batch size,
        which the throughput engine's buckets keep to a few. ``pipelined`` (default: on CUDA) runs
        batch 1 one stage ahead: stage k+1 is queued on the device before stage k's exit decision,
        computed on the device, is read back, so the device never idles while the host decides; an
        input that exits wastes one queued stage. ``mean``, ``std`` (per RGB channel) normalise uint8
        images; ``profile``: see :meth:`monitor` (:func:`engine_from_run` gives the run's)."""
        if not isinstance(sdn, SDN):
            raise ArgumentError("early exits need an SDN (a model with internal classifiers), not a plain CNN")
        given = _as_rule(rule, fallback)
        self.thresholds = given.per_ic(len(sdn.positions))
        self.temperatures = given.scales(sdn.num_outputs)
        ensemble = given.fitted_ensemble(sdn.num_outputs)
        # the rule as carried out, spelled out: one threshold per IC, one temperature per output
        self.rule = given.calibrated(self.thresholds, self.temperatures, given.fallback, ensemble)
        if precision not in ("fp32", "bf16"):
            raise ArgumentError(f"`precision` is fp32 or bf16, not {precision!r}")
        self.device = torch.device(device) if device is not None else next(sdn.parameters()).device
        self.sdn = sdn.eval().to(self.device)
        self.num_outputs = sdn.num_outputs
        self.relative_costs = torch.tensor(output_costs(sdn).relative, dtype=torch.float64)
        self.precision, self.compiled = precision, bool(compile)
        # the graphs of reduce-overhead compilation reuse their output buffers: copy what is kept
        self._copy_out = self.compiled and self.device.type == "cuda"
        # decisions in float64 on the CPU (as the records); on a GPU float32: no float64 on the device
        self._dtype = torch.float32 if self.device.type == "cuda" else torch.float64
        self._build_stages(fold_bn)
        # ZTW's ensemble as per-output weight and bias tensors (None: the outputs as they are)
        self._ensemble = (
            None
            if ensemble is None
            else [
                (
                    torch.tensor(w, dtype=self._dtype, device=self.device).view(1, -1, 1),
                    torch.tensor(b, dtype=self._dtype, device=self.device),
                )
                for w, b in zip(ensemble.weights, ensemble.biases)
            ]
        )
        self.pipelined = self.device.type == "cuda" if pipelined is None else bool(pipelined)
        self.mean, self.std, self.profile = *_channel_stats(mean, std), profile

    def monitor(self, window: int = WINDOW, alpha: float = ALPHA) -> DriftMonitor:
        """A drift monitor for this engine's answers: feed it each result's ``exits`` and
        ``confidence`` (:meth:`DriftMonitor.observe`); it says when a window of ``window`` inputs
        exits differently from the validation split (false alarms at rate ``alpha`` per window)."""
        if self.profile is None:
            raise NotCalibratedError(
                "this engine has no validation exit profile (its rule is not the run's calibrated one, "
                "or the run was analyzed before profiles were kept): analyze the run and use its calibrated rule"
            )
        return DriftMonitor(self.profile, window, alpha)

    @property
    def fallback(self) -> str:
        """What an input no IC lets out gets: ``most_confident`` or ``final``."""
        return self.rule.fallback

    def _build_stages(self, fold_bn: bool) -> None:
        """The stages: the blocks up to each IC (the stem first) with the IC, then the rest with the
        final classifier; each as a batch-1 and a batched function (see :meth:`_stage_fn`)."""
        sdn, temps = self.sdn, self.temperatures
        cnn = sdn.cnn
        # conv+BN folding is an inference-only rewrite of copies; the SDN itself is left untouched
        fold = _fold_bn if fold_bn else (lambda m: m)
        self._stem, self._blocks, self._final = fold(cnn.stem), [fold(b) for b in cnn.blocks], cnn.head
        if temps[-1] != 1.0:
            head, t_final = cnn.head, temps[-1]
            self._final = lambda x: head(x) / t_final
        # two heads per IC: batch 1 the folded few-op function; batches the module's own pooling ops,
        # which read channels-last maps in place (at batch 256 on the development CPU 3-5x faster than
        # the folded head, whose reductions need NCHW memory)
        one_heads = [_inference_head(h, 1.0 / t) for h, t in zip(sdn.heads, temps)]
        batch_heads = [_scaled(h, 1.0 / t) for h, t in zip(sdn.heads, temps)]
        self._one_heads, self._batch_heads = one_heads, batch_heads  # what each path runs (benchmarks time them)
        # ZTW's cascade links, temperatures folded: IC k's scaled logits gain
        # (W T_{k-1} / T_k) z_{k-1} + b / T_k from IC k - 1's scaled logits z_{k-1}
        self._links: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sdn.positions)
        for k, link in enumerate(sdn.cascades or [], start=1):
            w, b = link.weight.detach(), link.bias.detach()
            self._links[k] = ((w * (temps[k - 1] / temps[k])).t().contiguous(), (b / temps[k]).clone())
        # stage k: (its blocks, its IC index or None for the final classifier)
        self._stages: list[tuple[list[nn.Module], int | None]] = []
        self._stage_fns_one, self._stage_fns = [], []
        start = 0
        for k, p in enumerate([*sdn.positions, len(self._blocks) - 1]):
            blocks = ([self._stem] if start == 0 else []) + self._blocks[start : p + 1]
            ic = k if k < len(sdn.positions) else None
            self._stages.append((blocks, ic))
            self._stage_fns_one.append(self._stage_fn(blocks, one_heads[k] if ic is not None else self._final))
            self._stage_fns.append(self._stage_fn(blocks, batch_heads[k] if ic is not None else self._final))
            start = p + 1

    # ------------------------------------------------------------------------------------ paths

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(IMAGES)
        if x.dim() == 4 and x.shape[0] == 0:
            return x
        self.sdn.cnn.check_input(x)
        return x.to(self.device, torch.float32)

    def images(self, x: Images, normalized: bool = False) -> torch.Tensor:
        """What every entry point takes, as the stages take it (a float ``[N, 3, H, W]`` batch on the
        engine's device). The one image convention: uint8 RGB ``[N, H, W, 3]`` (or ``[H, W, 3]``;
        a tensor or a numpy array) or image files (paths, or folders of images), normalised here with
        the engine's ``mean`` and ``std``; a float ``[N, 3, H, W]`` tensor only with ``normalized=True``
        (the caller normalised it). Anything else is refused in one line."""
        if isinstance(x, (str, Path)) or (
            isinstance(x, (list, tuple)) and x and all(isinstance(p, (str, Path)) for p in x)
        ):
            x = self._read(x)
        elif isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(f"{IMAGES}, not {type(x).__name__}")
        if x.dtype == torch.uint8:
            if normalized:
                raise ArgumentError("uint8 images are not normalised: leave out normalized=True")
            return self._check(self._normalize(x))
        if not x.is_floating_point() or not normalized:
            raise ArgumentError(
                f"{IMAGES}; got a {str(x.dtype).removeprefix('torch.')} tensor: a float tensor [N, 3, H, W] "
                "already normalised with the run's mean and std goes in with normalized=True"
            )
        return self._check(x)

    def _read(self, paths: str | Path | Sequence[str | Path]) -> torch.Tensor:
        from ..data import image_paths, read_image

        files = image_paths([paths] if isinstance(paths, (str, Path)) else list(paths))
        size = self.sdn.image_size
        return torch.from_numpy(np.stack([read_image(f, size, resize=False) for f in files]))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        from ..data import normalize

        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ArgumentError(f"uint8 images are RGB [N, H, W, 3] (or [H, W, 3]), got {list(x.shape)}")
        if self.mean is None or self.std is None:
            raise ArgumentError(
                "this engine has no normalisation for uint8 images: give `mean` and `std` (engine_from_run "
                "gives the run's), or pass images you normalised with normalized=True"
            )
        return normalize(x.to(self.device), self.mean, self.std).contiguous()

    def classify_one(self, x: Images, *, normalized: bool = False) -> tuple[int, int, float]:
        """Classify one image (see :meth:`images`; a float one ``[1, 3, H, W]`` or ``[3, H, W]``):
        (prediction, exit, confidence)."""
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 3:
            x = x.unsqueeze(0)
        return self._one(self.images(x, normalized))[:3]

    def _stage_fn(
        self, blocks: list, head: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """One stage as a function ``h -> (feature, logits)``: its blocks, then ``head`` (its IC's,
        or the final classifier); under bf16 autocast and compiled when the engine was asked to."""

        def run(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for block in blocks:
                h = block(h)
            return h, head(h)

        fn = run
        if self.compiled:
            fn = torch.compile(run, mode="reduce-overhead" if self.device.type == "cuda" else None, dynamic=False)
        if self.precision == "bf16":
            compiled_fn = fn

            def fn(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    h, z = compiled_fn(h)
                return h, z.float()

        return fn

    def _call_stage(
        self, k: int, h: torch.Tensor, one: bool = False, prev: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage ``k`` on ``h``: with the batch-1 heads when ``one``; ``prev``, the previous IC's
        logits, feeds a cascade link."""
        h, z = (self._stage_fns_one if one else self._stage_fns)[k](h)
        if self._copy_out:
            h, z = h.clone(), z.clone()
        link = self._links[k] if k < len(self._links) else None
        if link is not None:
            z = torch.addmm(link[1], prev.to(link[0].dtype), link[0]) + z  # type: ignore[union-attr]
        return h, z

    @torch.inference_mode()
    def _one(self, x: torch.Tensor) -> tuple[int, int, float, int]:
        """:meth:`classify_one`, plus the output that answered."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = self._check(x)
        if x.shape[0] != 1:
            raise ArgumentError(f"classify_one takes one image, got a batch of {x.shape[0]}")
        # NCHW memory at batch 1: channels-last ran VGG-16-BN's batch 1 at half speed on the development CPU
        rows = self._new_rows(x.contiguous(), 0)
        if self.pipelined:
            return self._one_pipelined(rows)
        h, z = rows.h, None
        for s_k, (_, ic) in enumerate(self._stages):
            h, z = self._call_stage(s_k, h, one=True, prev=z)
            pred, conf, answer = self._decide(z, rows, ic)
            if ic is None:
                return int(pred), self.num_outputs - 1, float(conf), int(answer)
            if bool(answer):
                return int(pred), ic, float(conf), ic
        raise AssertionError("the last stage is the final classifier")  # pragma: no cover

    def _one_pipelined(self, rows: _Rows) -> tuple[int, int, float, int]:
        """Batch 1 with the next stage queued before this stage's decision is read (see ``pipelined``);
        the same decisions as the sequential path, made on the device."""
        n = len(self._stages)
        h, z = self._call_stage(0, rows.h, one=True)
        pending = self._read_back(self._decide(z, rows, self._stages[0][1]))
        for s_k in range(n):
            if s_k + 1 < n:  # queue the next stage (and its decision) before waiting for this one's
                h, z = self._call_stage(s_k + 1, h, one=True, prev=z)
                following = self._read_back(self._decide(z, rows, self._stages[s_k + 1][1]))
            host, event = pending
            if event is not None:
                event.synchronize()
            pred, conf, answer = host.tolist()
            if s_k == n - 1:  # the final classifier: ``answer`` is the output that answered
                return int(pred), self.num_outputs - 1, conf, int(answer)
            if answer:
                return int(pred), s_k, conf, s_k
            pending = following
        raise AssertionError("the last stage is the final classifier")  # pragma: no cover

    def _read_back(self, decision: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """A batch-1 decision (prediction, confidence, answer) copied to the host without waiting
        (with the event to wait on, on CUDA)."""
        d = torch.stack([t.to(torch.float64 if self.device.type != "cuda" else torch.float32) for t in decision])
        if self.device.type != "cuda":
            return d.view(-1), None
        host = d.view(-1).to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _decide(self, z: torch.Tensor, rows: _Rows, ic: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The torch runtime's exit decision, for every path: ``z`` is one stage's logits for ``rows``
        (temperatures applied). At IC ``ic``: (prediction, max softmax, whether each input leaves),
        the rule's per-input state in ``rows`` updated. At the final classifier (``ic`` None):
        (prediction, confidence, the output that answered), the fallback applied."""
        z = z.to(self._dtype)
        if self._ensemble is not None:  # the ensemble of this output and those before it
            rows.logps = torch.cat([rows.logps, torch.log_softmax(z, 1).unsqueeze(1)], 1)
            w, b = self._ensemble[rows.logps.shape[1] - 1]
            z = (rows.logps * w).sum(1) + b
        p = torch.softmax(z, dim=1)
        conf, pred = p.max(dim=1)
        if ic is None:
            answered = torch.full_like(pred, self.num_outputs - 1)
            if self.rule.fallback == "most_confident":
                use_ic = rows.best_conf >= conf
                pred, conf = torch.where(use_ic, rows.best_pred, pred), torch.where(use_ic, rows.best_conf, conf)
                answered = torch.where(use_ic, rows.best_k, answered)
            return pred, conf, answered
        # state only a rule or fallback reads is kept (each op counts at batch 1: 10-20 us on a CPU)
        if self.rule.name == "entropy":
            score = 1.0 + torch.special.xlogy(p, p).sum(1) / math.log(max(p.shape[1], 2))
        elif self.rule.name == "patience":
            rows.run = torch.where(pred == rows.prev, rows.run + 1, torch.ones_like(rows.run))
            rows.prev = pred
            score = rows.run / (self.num_outputs - 1)
        else:
            score = conf
        if self.rule.fallback == "most_confident":
            better = conf > rows.best_conf
            rows.best_conf = torch.where(better, conf, rows.best_conf)
            rows.best_pred = torch.where(better, pred, rows.best_pred)
            rows.best_k = torch.where(better, torch.full_like(rows.best_k, ic), rows.best_k)
        return pred, conf, score >= self.thresholds[ic]

    def classify_batched(self, x: Images, *, normalized: bool = False) -> EngineResult:
        """Classify one batch (see :meth:`images`) with compaction: inputs that exit leave the working
        batch (the throughput engine on a single batch of ``len(x)``)."""
        x = self.images(x, normalized)
        return _concat(list(self.stream([x], batch_size=max(len(x), 1), normalized=True)), self.relative_costs)

    # ------------------------------------------------------------------------ the throughput engine

    @torch.inference_mode()
    def stream(
        self,
        inputs: Iterable[Images | tuple[torch.Tensor, ...]],
        batch_size: int = 256,
        buckets: bool | None = None,
        *,
        normalized: bool = False,
    ) -> Iterator[EngineResult]:
        """Classify a stream of image batches (any sizes; or a split's ``(images, labels)`` batches, as
        :func:`~shallowdeep.data.batches` makes them) with re-batching; yield results in input order.

        A queue stands before each stage (the blocks up to an IC and the IC, or the rest and the
        final classifier). A stage runs when its queue holds ``batch_size`` inputs, deepest first;
        inputs that exit leave, the rest join the next queue; at the end of the stream the queues are
        flushed in order. So every stage runs at full batch (the last of each aside), work per stage
        is proportional to the inputs that reach it, and no queue holds ``2 * batch_size`` inputs
        whatever the stream's length. With ``buckets`` (default: on CUDA or compiled) a flushed partial batch is
        padded to the next of ``batch_size, batch_size / 2, …, 8``, so only a few shapes occur.
        One host synchronisation per stage batch: the count of inputs that exit. Each batch is taken
        as :meth:`images` takes it (a split's batches are normalised: ``normalized=True``).
        """
        if batch_size < 1:
            raise ArgumentError(f"batch size must be at least 1, got {batch_size}")
        buckets = (self.device.type == "cuda" or self.compiled) if buckets is None else buckets
        out = _Results(self.relative_costs)
        queues: list[list[_Rows]] = [[] for _ in self._stages]
        seen = 0
        for x in inputs:
            if isinstance(x, tuple) or (isinstance(x, list) and x and isinstance(x[0], torch.Tensor)):
                x = x[0]  # (images, labels) batches of a data split
            x = self.images(x, normalized)
            if not len(x):
                continue
            # NHWC memory (what the data pipeline makes anyway): on the development CPU it ran
            # ResNet-56 at batch 256 1.3x faster and closer to its FLOPs per stage; compaction keeps it
            x = x.contiguous(memory_format=torch.channels_last)
            queues[0].append(self._new_rows(x, seen))
            out.reserve(seen := seen + len(x))
            while True:  # the deepest full queue first: keeps every queue below 2 * batch_size
                full = [k for k, q in enumerate(queues) if sum(map(len, q)) >= batch_size]
                if not full:
                    break
                k = full[-1]
                self._run_stage(k, _pop(queues[k], batch_size), queues, out, None)
            ready = out.pop_ready()
            if ready is not None:
                yield ready
        for k in range(len(self._stages)):
            while queues[k]:
                rows = _pop(queues[k], batch_size)
                pad = next((bk for bk in _buckets(batch_size) if bk >= len(rows)), batch_size) if buckets else None
                self._run_stage(k, rows, queues, out, pad)
        ready = out.pop_ready()
        if ready is not None:
            yield ready

    def _new_rows(self, x: torch.Tensor, start: int) -> _Rows:
        n, dev, dt = len(x), self.device, self._dtype
        return _Rows(
            x,
            torch.arange(start, start + n),
            torch.full((n,), -1.0, dtype=dt, device=dev),
            torch.zeros(n, dtype=torch.int64, device=dev),
            torch.zeros(n, dtype=torch.int64, device=dev),
            torch.full((n,), -1, dtype=torch.int64, device=dev),
            torch.zeros(n, dtype=dt, device=dev),
            None if self._ensemble is None else torch.zeros((n, 0, self.sdn.num_classes), dtype=dt, device=dev),
            None,
        )

    def _run_stage(self, k: int, rows: _Rows, queues: list[list[_Rows]], out: _Results, pad: int | None) -> None:
        ic = self._stages[k][1]
        n = len(rows)
        # a bucketed shape: zero rows, dropped again below
        h, prev = _padded(rows.h, pad), None if rows.prev_z is None else _padded(rows.prev_z, pad)
        h, z = self._call_stage(k, h, prev=prev)
        h, z = h[:n], z[:n]
        pred, conf, answer = self._decide(z, rows, ic)
        if ic is None:  # the final classifier: everyone left answers
            out.put(rows.idx, pred, self.num_outputs - 1, conf, answer)
            return
        leave = answer
        leave_cpu = leave.cpu()  # the one host synchronisation of this stage batch
        n_out = int(leave_cpu.sum())
        if n_out:
            out.put(rows.idx[leave_cpu], pred[leave], ic, conf[leave], torch.full_like(pred[leave], ic))
        if n_out < n:
            rows.h = h
            if self._links[-1] is not None:  # the next IC's cascade link reads these logits
                rows.prev_z = z
            queues[k + 1].append(rows.take(~leave, ~leave_cpu) if n_out else rows)

    @torch.inference_mode()
    def ic_confidences(self, x: Images, *, normalized: bool = False) -> torch.Tensor:
        """Every IC's max softmax for ``x`` (see :meth:`images`), as this engine computes it:
        ``[N, ICs]`` (float64). Useful to choose thresholds that produce a given exit pattern."""
        x = self.images(x, normalized)
        out, h, z = [], x, None
        for s_k in range(len(self._stages) - 1):  # every IC's stage, with its batch-1 head
            h, z = self._call_stage(s_k, h, one=True, prev=z)
            out.append(torch.softmax(z.double(), dim=1).max(dim=1)[0])
        return torch.stack(out, 1).cpu() if out else torch.zeros(x.shape[0], 0, dtype=torch.float64)

    def classify(self, x: Images, batch_size: int = 256, *, normalized: bool = False) -> EngineResult:
        """Classify ``x`` (see :meth:`images`): one at a time when ``batch_size == 1``, else through
        the throughput engine (:meth:`stream`) at ``batch_size``. Results are in input order."""
        x = self.images(x, normalized)
        if batch_size < 1:
            raise ArgumentError(f"batch size must be at least 1, got {batch_size}")
        _sync(self.device)
        started = time.perf_counter()
        if batch_size == 1:
            rows = [self._one(x[i : i + 1]) for i in range(x.shape[0])]
            preds, exits, answered = (torch.tensor([r[j] for r in rows], dtype=torch.int64) for j in (0, 1, 3))
            confs = torch.tensor([r[2] for r in rows], dtype=torch.float64)
            res = EngineResult(preds, exits, confs, self.relative_costs[exits], answered)
        else:
            chunks = (x[i : i + batch_size] for i in range(0, x.shape[0], batch_size))
            res = _concat(list(self.stream(chunks, batch_size, normalized=True)), self.relative_costs)
        _sync(self.device)
        res.seconds = time.perf_counter() - started
        return res


# --------------------------------------------------------------------------------------------------
# the throughput engine's bookkeeping


@dataclass
class _Rows:
    """Inputs in flight before one stage: features ``h``, stream positions ``idx`` (CPU) and the
    exit rule's per-input state (most confident IC so far, the patience rule's run)."""

    h: torch.Tensor
    idx: torch.Tensor
    best_conf: torch.Tensor
    best_pred: torch.Tensor
    best_k: torch.Tensor
    prev: torch.Tensor
    run: torch.Tensor
    logps: torch.Tensor | None  # an ensemble's: the log-softmax of every output so far [N, outputs, C]
    prev_z: torch.Tensor | None  # a cascade's: the previous IC's logits (temperature applied) [N, C]

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, mask: torch.Tensor, mask_cpu: torch.Tensor) -> _Rows:
        return _Rows(self.h[mask], self.idx[mask_cpu], *(_index(getattr(self, f), mask) for f in _STATE))

    def rows(self, start: int, stop: int | None = None) -> _Rows:
        """Inputs ``start:stop`` as views (no copy of the feature maps)."""
        part = slice(start, stop)
        return _Rows(self.h[part], self.idx[part], *(_index(getattr(self, f), part) for f in _STATE))

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        """Several batches before one stage as one, in their order."""
        return _Rows(
            torch.cat([p.h for p in parts]),
            torch.cat([p.idx for p in parts]),
            *(_cat([getattr(p, f) for p in parts]) for f in _STATE),
        )


_STATE = ("best_conf", "best_pred", "best_k", "prev", "run", "logps", "prev_z")


def _padded(t: torch.Tensor, pad: int | None) -> torch.Tensor:
    """``t`` with zero rows appended up to ``pad`` rows (``None``, or no more rows than it has: ``t``)."""
    if pad is None or pad <= len(t):
        return t
    return torch.cat([t, t.new_zeros((pad - len(t), *t.shape[1:]))])


def _index(state: torch.Tensor | None, index: torch.Tensor | slice) -> torch.Tensor | None:
    return None if state is None else state[index]


def _cat(states: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if states[0] is None else torch.cat(states)  # type: ignore[arg-type]


def _pop(queue: list[_Rows], n: int) -> _Rows:
    """The first ``n`` inputs of a queue (or all it holds) as one batch; the rest stay queued."""
    return take(queue, n, _Rows.concat)


def _buckets(batch_size: int) -> list[int]:
    """The padded sizes of partial batches: 8, 16, … up to ``batch_size`` (ascending)."""
    sizes, b = [batch_size], batch_size
    while b // 2 >= 8:
        b //= 2
        sizes.append(b)
    return sorted(sizes)


class _Results:
    """Results by stream position, handed back as soon as a prefix of the stream is complete."""

    def __init__(self, relative_costs: torch.Tensor) -> None:
        self.costs = relative_costs
        self.base = 0
        self.pred = torch.zeros(0, dtype=torch.int64)
        self.exit = torch.zeros(0, dtype=torch.int64)
        self.ans = torch.zeros(0, dtype=torch.int64)
        self.conf = torch.zeros(0, dtype=torch.float64)
        self.filled = torch.zeros(0, dtype=torch.bool)

    def reserve(self, upto: int) -> None:
        extra = upto - self.base - len(self.filled)
        if extra > 0:
            self.pred, self.exit, self.ans = (
                torch.cat([t, torch.zeros(extra, dtype=torch.int64)]) for t in (self.pred, self.exit, self.ans)
            )
            self.conf = torch.cat([self.conf, torch.zeros(extra, dtype=torch.float64)])
            self.filled = torch.cat([self.filled, torch.zeros(extra, dtype=torch.bool)])

    def put(self, idx: torch.Tensor, pred: torch.Tensor, exit_: int, conf: torch.Tensor, ans: torch.Tensor) -> None:
        i = idx - self.base
        self.pred[i], self.exit[i], self.ans[i] = pred.cpu(), exit_, ans.cpu()
        self.conf[i] = conf.cpu().double()
        self.filled[i] = True

    def pop_ready(self) -> EngineResult | None:
        missing = (~self.filled).nonzero()
        n = int(missing[0]) if len(missing) else len(self.filled)
        if n == 0:
            return None
        res = EngineResult(self.pred[:n], self.exit[:n], self.conf[:n], self.costs[self.exit[:n]], self.ans[:n])
        self.pred, self.exit, self.ans, self.conf, self.filled = (
            t[n:] for t in (self.pred, self.exit, self.ans, self.conf, self.filled)
        )
        self.base += n
        return res


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _concat(parts: list[EngineResult], relative_costs: torch.Tensor) -> EngineResult:
    if not parts:
        z = torch.zeros(0, dtype=torch.int64)
        return EngineResult(z, z.clone(), torch.zeros(0, dtype=torch.float64), relative_costs[z], z.clone())
    return EngineResult(
        *(
            torch.cat([getattr(p, f) for p in parts])
            for f in ("predictions", "exits", "confidence", "relative_cost", "answered")
        )
    )


def _as_rule(rule: ExitRule | float | Sequence[float], fallback: str | None) -> ExitRule:
    """The engine's rule: an :class:`ExitRule` as given, or max softmax at the given thresholds."""
    if isinstance(rule, ExitRule):
        if fallback is not None and fallback != rule.fallback:
            raise ArgumentError("the exit rule carries its own `fallback`: set it there")
        if rule.thresholds is None:
            raise ArgumentError(f"the {rule.label} rule has no `threshold`: calibrate it or give one")
        return rule
    qs = [rule] if isinstance(rule, (int, float)) else list(rule)
    return ExitRule(thresholds=tuple(qs), fallback=fallback or "most_confident")
