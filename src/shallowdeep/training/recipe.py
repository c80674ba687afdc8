"""Training recipes: every hyperparameter of a run, the paper's by default (spec section 5), and the
optimiser and learning-rate schedule they describe (``torch.optim`` and ``torch.optim.lr_scheduler``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from ..core.catalog import MODES
from ..core.errors import ArgumentError
from ..core.fields import check_fields
from ..core.io import JSONObject

# weight decay of the paper's recipes by architecture (spec section 5); others use 5e-4
WEIGHT_DECAY = {"vgg16_bn": 5e-4, "wrn32_4": 5e-4, "resnet56": 1e-4, "mobilenet": 1e-4}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("multistep", "cosine")


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a training run. ``schedule`` ``multistep`` multiplies the rate by
    ``gamma`` at each of the 0-based ``milestones``; ``cosine`` decays it to 0 along a half cosine
    over the epochs after the warm-up; ``warmup_epochs`` ramp it up linearly first.
    ``clip_grad_norm`` (0: off) clips the gradients' global norm before each step, as ViT recipes do.
    ``distill`` (0: off) mixes each IC's loss with distillation from the network's own final output:
    ``(1 - distill) * CE(IC, y) + distill * T^2 * KL(softmax(final / T) || softmax(IC / T))`` with
    ``T = distill_temperature`` and the final output detached (a teacher, never a student)."""

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    schedule: str = "multistep"
    clip_grad_norm: float = 0.0
    distill: float = 0.0
    distill_temperature: float = 3.0

    def check(self) -> Recipe:
        """Refuse values no training can use, naming the argument; returns ``self``."""

        def finite(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
                bound = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
                raise ArgumentError(f"`{name}` must be a finite number {bound}, got {v}")

        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ArgumentError(f"`epochs` must be at least 1, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ArgumentError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ArgumentError(f"unknown `optimizer` {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        finite("lr", 0.0, lo_open=True)
        finite("momentum", 0.0, 1.0)
        finite("weight_decay", 0.0)
        finite("gamma", 0.0, lo_open=True)
        finite("label_smoothing", 0.0, 1.0)
        finite("clip_grad_norm", 0.0)
        finite("distill", 0.0, 1.0)
        finite("distill_temperature", 0.0, lo_open=True)
        if self.schedule not in SCHEDULES:
            raise ArgumentError(f"unknown `schedule` {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "cosine" and self.milestones:
            raise ArgumentError("`milestones` are for the multistep `schedule`; the cosine one takes none")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ArgumentError("`nesterov` needs the sgd `optimizer` with a positive `momentum`")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise ArgumentError(f"`warmup_epochs` must lie in 0..{self.epochs - 1}, got {self.warmup_epochs}")
        if any(not isinstance(m, int) or not 0 < m < self.epochs for m in self.milestones) or list(
            self.milestones
        ) != sorted(set(self.milestones)):
            raise ArgumentError(
                f"`milestones` must be increasing epochs in 1..{self.epochs - 1}, got {list(self.milestones)}"
            )
        return self

    def to_json(self) -> JSONObject:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_json(cls, d: JSONObject) -> Recipe:
        """A recipe from :meth:`to_json` (older run folders lack the newer fields: defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ArgumentError(f"unknown recipe fields {', '.join(unknown)}")
        try:
            recipe = cls(**d)  # check_fields below makes a milestones list the tuple the field is
        except TypeError as e:
            raise ArgumentError(f"not a recipe ({e})") from None
        check_fields(recipe)
        return recipe.check()

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``, as the schedule of :func:`make_schedule` sets it."""
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=self.lr)
        sched = make_schedule(opt, self)
        for _ in range(epoch):
            opt.step()
            sched.step()
        return float(opt.param_groups[0]["lr"])


def default_recipe(mode: str, arch: str, epochs: int | None = None) -> Recipe:
    """The paper's recipe for ``mode`` (spec section 5). With other ``epochs`` the milestones keep
    their fraction of training (a recipe given explicit milestones keeps them)."""
    wd = WEIGHT_DECAY.get(arch, 5e-4)
    if mode in ("ic-only", "mixed"):  # ICs (and, mixed, the whole network) on a trained CNN
        base, milestones = 25, (15,)
        r = Recipe(epochs=base, optimizer="adam", lr=1e-3, weight_decay=wd, milestones=milestones)
    elif mode in ("cnn", "sdn"):
        base, milestones = 100, (35, 60, 85)
        r = Recipe(epochs=base, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=wd, milestones=milestones)
    else:
        raise ArgumentError(f"unknown `mode` {mode!r}: choose one of {', '.join(MODES)}")
    if epochs is not None and epochs != base:
        if epochs < 1:
            raise ArgumentError(f"`epochs` must be at least 1, got {epochs}")
        # keep the schedule's shape: each decay at the same fraction of training
        scaled = {max(1, round(m * epochs / base)) for m in milestones}
        r = replace(r, epochs=epochs, milestones=tuple(sorted(m for m in scaled if m < epochs)))
    return r


def make_optimizer(params: list[nn.Parameter], recipe: Recipe, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params``; ``fused`` asks for PyTorch's fused kernels (CUDA:
    one launch per step instead of one per parameter group chunk and operation)."""
    kw = {"fused": True} if fused else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            **kw,
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **kw)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **kw)
    raise ArgumentError(f"unknown `optimizer` {recipe.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def make_schedule(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: linear warm-up over ``warmup_epochs``, then ×``gamma`` at each milestone
    (``multistep``) or a half cosine down to 0 at the last epoch's end (``cosine``)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

    w = recipe.warmup_epochs
    if recipe.schedule == "cosine":
        decay: torch.optim.lr_scheduler.LRScheduler = CosineAnnealingLR(opt, T_max=recipe.epochs - w)
    else:
        # SequentialLR hands over at the warm-up's end; MultiStepLR then counts from 0, so shift milestones
        decay = MultiStepLR(opt, milestones=[m - w for m in recipe.milestones if m > w], gamma=recipe.gamma)
    if not w:
        return decay
    warm = LinearLR(opt, start_factor=1.0 / (w + 1), total_iters=w)
    return SequentialLR(opt, [warm, decay], milestones=[w])
