"""Real early-exit inference: every input stops at the first IC confident enough, in wall-clock time.

Two paths, with the same answers:

- ``batch-1``: one input at a time, Python control flow between blocks; the IC heads are folded
  for inference (few ops, see :func:`_inference_head`) and conv+BN pairs of the backbone are folded
  (on copies), so checking the ICs costs less than the folding saves.
- ``batched``: a batch runs block by block; at each IC the inputs that exit leave the working
  batch (compaction), later blocks run on the rest, and results come back in input order.

An input that no IC lets out pays for the whole SDN and gets the fallback's prediction: the most
confident output (``"most_confident"``, the reference's) or the final output (``"final"``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .core.errors import ArgumentError
from .core.exits import EXIT_RULES as RULES
from .core.exits import check_fallback
from .costs import output_costs
from .heads import ICHead
from .sdn import SDN

@dataclass
class EngineResult:
    """Per input: ``predictions``, ``exits`` (output index; ``num_outputs - 1`` = no IC exit),
    ``confidence`` (max softmax of the output that answered) and ``relative_cost`` (cost / CNN)."""

    predictions: torch.Tensor
    exits: torch.Tensor
    confidence: torch.Tensor
    relative_cost: torch.Tensor

    def __len__(self) -> int:
        return len(self.predictions)


def _inference_head(head: ICHead, scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """An :class:`ICHead` as a plain function for inference, with as few ops as we found.

    At batch 1 on a CPU each extra op costs far more between convolutions than alone (its code is
    cold), so the mixed pooling is two contiguous reductions per statistic and the mixing weight and
    the average's 1/r^2 are folded into two pre-transposed weight matrices:
    ``logits = (a W) max_r(x) + ((1 - a) / r^2 W) sum_r(x) + b``. ``scale`` (1 / temperature) is
    folded into W and b as well.
    """
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


def _fold_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every conv → BN pair folded into one conv (torch.fx's fuser), or
    the module itself where it cannot be traced. Only for inference, in eval mode."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module
    try:
        return fuse(module, inplace=False)
    except Exception:  # an untraceable custom block keeps its BN; results are the same either way
        return module


def _confidence(num_classes: int) -> Callable[[torch.Tensor], tuple[float, int]]:
    """Max softmax and argmax of one logit row. For few classes plain Python on the row beats three
    tensor ops; both compute in double precision, like the batched path."""
    if num_classes <= 32:
        def small(z: torch.Tensor) -> tuple[float, int]:
            row = z.view(-1).tolist()
            m = max(row)
            return 1.0 / sum(math.exp(v - m) for v in row), row.index(m)

        return small

    def large(z: torch.Tensor) -> tuple[float, int]:
        conf, pred = torch.softmax(z.double(), dim=1).max(dim=1)
        return conf.item(), int(pred)

    return large


class EarlyExitEngine:
    """Early-exit inference for an :class:`SDN` at a confidence ``threshold`` (one for every IC, or
    one per IC). Build it once per model; the model is put in eval mode and must not change after."""

    def __init__(self, sdn: SDN, threshold: float | Sequence[float], fallback: str = "most_confident",
                 device: torch.device | str | None = None, fold_bn: bool = True, rule: str = "max_softmax",
                 patience: int = 0, temperatures: Sequence[float] | None = None) -> None:
        """``rule``: ``"max_softmax"`` (exit when an IC's max softmax >= q), ``"entropy"`` (when its
        certainty ``1 - H / log C`` >= q) or ``"patience"`` (when ``patience`` consecutive ICs agree:
        give q = patience / ICs). ``temperatures`` (one per output) divide the logits: folded into
        the IC heads' weights, and applied to the final classifier's output."""
        if not isinstance(sdn, SDN):
            raise ArgumentError("early exits need an SDN (a model with internal classifiers), not a plain CNN")
        check_fallback(fallback)
        n_ics = len(sdn.positions)
        qs = [float(threshold)] * n_ics if isinstance(threshold, (int, float)) else [float(q) for q in threshold]
        if len(qs) != n_ics:
            raise ArgumentError(f"{len(qs)} thresholds for {n_ics} ICs")
        if not all(q >= 0.0 for q in qs):  # NaN fails too
            raise ArgumentError(f"a `threshold` is a softmax confidence: a number >= 0 (above 1: no IC exits), got {qs}")
        if rule not in RULES:
            raise ArgumentError(f"unknown exit `rule` {rule!r}: choose one of {', '.join(RULES)}")
        if rule == "patience" and patience < 1:
            raise ArgumentError("the patience rule needs `patience` >= 1 agreeing ICs")
        temps = [1.0] * sdn.num_outputs if temperatures is None else [float(t) for t in temperatures]
        if len(temps) != sdn.num_outputs or not all(t > 0 for t in temps):
            raise ArgumentError(f"`temperatures` must be {sdn.num_outputs} positive numbers, got {temps}")
        self.rule, self.patience, self.temperatures = rule, int(patience), temps
        self.device = torch.device(device) if device is not None else next(sdn.parameters()).device
        self.sdn = sdn.eval().to(self.device)
        self.thresholds = qs
        self.fallback = fallback
        self.num_outputs = sdn.num_outputs
        costs = output_costs(sdn)
        self.relative_costs = torch.tensor(costs.relative, dtype=torch.float64)
        cnn = sdn.cnn
        # conv+BN folding is an inference-only rewrite of copies; the SDN itself is left untouched
        fold = _fold_bn if fold_bn else (lambda m: m)
        self._stem, self._blocks, self._final = fold(cnn.stem), [fold(b) for b in cnn.blocks], cnn.head
        if temps[-1] != 1.0:
            head, t_final = cnn.head, temps[-1]
            self._final = lambda x: head(x) / t_final
        self._conf = _confidence(sdn.num_classes)
        self._log_c = math.log(max(sdn.num_classes, 2))
        self._n_ics = n_ics
        self._heads = [_inference_head(h, 1.0 / t) for h, t in zip(sdn.heads, temps)]
        # position -> (IC index, head, threshold); None between ICs
        self._at: list[tuple[int, Callable[[torch.Tensor], torch.Tensor], float] | None] = [None] * len(self._blocks)
        for k, (p, h) in enumerate(zip(sdn.positions, self._heads)):
            self._at[p] = (k, h, qs[k])

    # ------------------------------------------------------------------------------------ paths

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ArgumentError("the engine takes a float tensor of images shaped [N, 3, H, W]")
        if x.dim() == 4 and x.shape[0] == 0:
            return x
        self.sdn.cnn.check_input(x)
        return x.to(self.device, torch.float32)

    @torch.inference_mode()
    def classify_one(self, x: torch.Tensor) -> tuple[int, int, float]:
        """Classify one image ``[1, 3, H, W]`` (or ``[3, H, W]``): (prediction, exit, confidence)."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = self._check(x)
        if x.shape[0] != 1:
            raise ArgumentError(f"classify_one takes one image, got a batch of {x.shape[0]}")
        h = self._stem(x)
        most_confident = (-1.0, 0, 0)  # (confidence, prediction, output) of the most confident so far
        prev, run = -1, 0  # the patience rule: previous IC's prediction, agreeing ICs so far
        for block, at in zip(self._blocks, self._at):
            h = block(h)
            if at is not None:
                k, head, q = at
                z = head(h)
                c, pred = self._conf(z)
                if self.rule == "max_softmax":
                    score = c
                elif self.rule == "entropy":
                    p = torch.softmax(z.double(), dim=1)
                    score = 1.0 + float(torch.special.xlogy(p, p).sum()) / self._log_c
                else:
                    run = run + 1 if pred == prev else 1
                    prev = pred
                    score = run / self._n_ics
                if score >= q:
                    return pred, k, c
                if c > most_confident[0]:
                    most_confident = (c, pred, k)
        c, pred = self._conf(self._final(h))
        if self.fallback == "most_confident" and most_confident[0] >= c:
            return most_confident[1], self.num_outputs - 1, most_confident[0]
        return pred, self.num_outputs - 1, c

    @torch.inference_mode()
    def classify_batched(self, x: torch.Tensor) -> EngineResult:
        """Classify a batch with compaction: inputs that exit leave the working batch."""
        x = self._check(x)
        n = x.shape[0]
        dev = self.device
        preds = torch.empty(n, dtype=torch.int64, device=dev)
        exits = torch.full((n,), self.num_outputs - 1, dtype=torch.int64, device=dev)
        confs = torch.empty(n, dtype=torch.float64, device=dev)
        if n == 0:
            return self._result(preds, exits, confs)
        active = torch.arange(n, device=dev)
        best_conf = torch.full((n,), -1.0, dtype=torch.float64, device=dev)
        best_pred = torch.zeros(n, dtype=torch.int64, device=dev)
        prev = torch.full((n,), -1, dtype=torch.int64, device=dev)
        run = torch.zeros(n, dtype=torch.float64, device=dev)
        h = self._stem(x)
        for block, at in zip(self._blocks, self._at):
            h = block(h)
            if at is None:
                continue
            k, head, q = at
            p = torch.softmax(head(h).double(), dim=1)
            conf, pred = p.max(dim=1)
            if self.rule == "max_softmax":
                score = conf
            elif self.rule == "entropy":
                score = 1.0 + torch.special.xlogy(p, p).sum(1) / self._log_c
            else:
                run = torch.where(pred == prev, run + 1, torch.ones_like(run))
                prev = pred
                score = run / self._n_ics
            out = score >= q
            better = conf > best_conf
            best_conf = torch.where(better, conf, best_conf)
            best_pred = torch.where(better, pred, best_pred)
            n_out = int(out.sum())  # the one host synchronisation per IC
            if n_out:
                idx = active[out]
                preds[idx], exits[idx], confs[idx] = pred[out], k, conf[out]
                if n_out == len(active):
                    return self._result(preds, exits, confs)
                keep = ~out
                h, active, best_conf, best_pred = h[keep], active[keep], best_conf[keep], best_pred[keep]
                prev, run = prev[keep], run[keep]
        conf, pred = torch.softmax(self._final(h).double(), dim=1).max(dim=1)
        if self.fallback == "most_confident":
            use_ic = best_conf >= conf
            pred = torch.where(use_ic, best_pred, pred)
            conf = torch.where(use_ic, best_conf, conf)
        preds[active], confs[active] = pred, conf
        return self._result(preds, exits, confs)

    @torch.inference_mode()
    def ic_confidences(self, x: torch.Tensor) -> torch.Tensor:
        """Every IC's max softmax for ``x`` ``[N, 3, H, W]``, as this engine computes it: ``[N, ICs]``
        (float64). Useful to choose thresholds that produce a given exit pattern."""
        x = self._check(x)
        out = []
        h = self._stem(x)
        for block, at in zip(self._blocks, self._at):
            h = block(h)
            if at is not None:
                out.append(torch.softmax(at[1](h).double(), dim=1).max(dim=1)[0])
        return torch.stack(out, 1).cpu() if out else torch.zeros(x.shape[0], 0, dtype=torch.float64)

    def _result(self, preds, exits, confs) -> EngineResult:
        exits_cpu = exits.cpu()
        return EngineResult(preds.cpu(), exits_cpu, confs.cpu(), self.relative_costs[exits_cpu])

    def classify(self, x: torch.Tensor, batch_size: int = 256) -> EngineResult:
        """Classify ``x`` ``[N, 3, H, W]``: one at a time when ``batch_size == 1``, else in batches of
        ``batch_size`` with compaction. Results are in input order."""
        x = self._check(x)
        if batch_size < 1:
            raise ArgumentError(f"batch size must be at least 1, got {batch_size}")
        if batch_size == 1:
            rows = [self.classify_one(x[i : i + 1]) for i in range(x.shape[0])]
            preds = torch.tensor([r[0] for r in rows], dtype=torch.int64)
            exits = torch.tensor([r[1] for r in rows], dtype=torch.int64)
            confs = torch.tensor([r[2] for r in rows], dtype=torch.float64)
            return EngineResult(preds, exits, confs, self.relative_costs[exits])
        parts = [self.classify_batched(x[i : i + batch_size]) for i in range(0, max(x.shape[0], 1), batch_size)]
        return EngineResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                              ("predictions", "exits", "confidence", "relative_cost")))
