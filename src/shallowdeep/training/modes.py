"""The training modes as small objects: which parameters learn, which modules stay in eval mode, and
how the outputs' losses combine: the paper's three (spec section 5) and the mixed regime of Kubaty
et al. (2024); each IC loss optionally distilled from the network's own final output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.catalog import MODES
from ..core.errors import ArgumentError
from ..models.sdn import outputs_of
from .recipe import Recipe

IC_CAPS = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)


class Mode:
    """What one training mode changes: which parameters learn, train/eval flags, and the loss."""

    name = ""
    label_smoothing = 0.0
    distill = 0.0  # the distillation term's share of each IC's loss (see Recipe)
    distill_temperature = 1.0

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.parameters())

    def set_train(self, model: nn.Module) -> None:
        model.train()

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def output_weights(self, n_outputs: int, epoch: int, epochs: int) -> list[float]:
        """Every output's weight in this epoch's loss (ICs first, final last)."""
        raise NotImplementedError

    def weighted_loss(
        self, outputs: list[torch.Tensor], y: torch.Tensor, weights: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sum_i weights[i] * loss_i``: ``CE(outputs[i], y)``, for the ICs mixed with distillation from
        the final output (or from ``teacher``, a separate network's logits) when ``distill`` > 0;
        ``weights`` is a tensor so that a compiled step takes each epoch's weights as an input instead
        of recompiling for new constants."""
        losses = [self.ce(o, y).float() for o in outputs]
        if self.distill > 0 and len(outputs) > 1:
            teacher = (outputs[-1] if teacher is None else teacher).detach()  # a teacher's logits carry no gradient
            a = self.distill
            ics = [(1 - a) * ce + a * self.distilled(o, teacher) for ce, o in zip(losses[:-1], outputs)]
            losses = [*ics, losses[-1]]
        return (weights * torch.stack(losses)).sum()

    def distilled(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean (Hinton et al. 2015)."""
        t = self.distill_temperature
        log_s = F.log_softmax(student.float() / t, dim=1)
        log_t = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)

    def loss(self, outputs: list[torch.Tensor], y: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        """This epoch's training loss of ``outputs`` (the mode's combination of cross-entropies)."""
        w = torch.tensor(self.output_weights(len(outputs), epoch, epochs), device=y.device)
        return self.weighted_loss(outputs, y, w)


class CNNMode(Mode):
    """Plain CNN training: cross-entropy on the one output."""

    name = "cnn"

    def output_weights(self, n_outputs, epoch, epochs):
        return [0.0] * (n_outputs - 1) + [1.0]


class ICOnlyMode(Mode):
    """Train only the ICs of an SDN made from a trained CNN; the CNN does not change at all.

    Its parameters get no gradient and it stays in eval mode, so BN running statistics and dropout
    are untouched and the final output predicts exactly as the CNN did.
    """

    name = "ic-only"

    def parameters(self, model):
        for p in model.cnn.parameters():
            p.requires_grad_(False)
        return model.ic_parameters()

    def set_train(self, model):
        model.train()
        model.cnn.eval()

    def output_weights(self, n_outputs, epoch, epochs):
        return [1.0] * (n_outputs - 1) + [0.0]


class SDNMode(Mode):
    """SDN training from scratch: ``sum_i tau_i * CE(IC_i) + CE(final)`` (spec section 5).

    IC i's weight grows linearly from 0.01 to its cap C_i: ``tau_i = min(C_i, 0.01 + e * C_i / E)``
    for epoch e counted from 1 of E.
    """

    name = "sdn"

    def weights(self, n_ics: int, epoch: int, epochs: int) -> list[float]:
        caps = [IC_CAPS[i] if i < len(IC_CAPS) else IC_CAPS[-1] for i in range(n_ics)]
        e = epoch + 1
        return [min(c, 0.01 + e * c / epochs) for c in caps]

    def output_weights(self, n_outputs, epoch, epochs):
        return self.weights(n_outputs - 1, epoch, epochs) + [1.0]


class MixedMode(SDNMode):
    """The mixed regime (Kubaty et al. 2024): from a trained CNN, the whole SDN (backbone unfrozen,
    new ICs) trained jointly with the SDN loss of :class:`SDNMode`, whose growing IC weights start
    at 0.01, so the new heads pull on the trained backbone gently at first."""

    name = "mixed"


class Objective(nn.Module):
    """A model and its mode's loss as one module, ``forward(x, y, weights) -> loss``: what the
    runtime wraps (compile, CUDA graphs, DDP), so one compiled graph covers the outputs' losses and
    their backward too, not only the network (the loss of an SDN is 2 x outputs small kernels)."""

    def __init__(self, model: nn.Module, mode: Mode, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.teacher = teacher  # a separate trained network the ICs distil from (frozen, in eval mode)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        target = None
        if self.teacher is not None:
            with torch.no_grad():
                target = outputs_of(self.teacher, x)[-1]
        return self.mode.weighted_loss(outputs_of(self.model, x), y, weights, target)

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        if self.teacher is not None:  # a teacher answers as it was trained: fixed BN statistics, no dropout
            self.teacher.eval()
        return self


def make_mode(name: str, label_smoothing: float = 0.0, distill: float = 0.0, distill_temperature: float = 1.0) -> Mode:
    """The mode object for ``"cnn"``, ``"ic-only"``, ``"sdn"`` or ``"mixed"``, with the recipe's
    label smoothing and IC distillation (weight and temperature; see :class:`~.recipe.Recipe`)."""
    modes = {"cnn": CNNMode, "ic-only": ICOnlyMode, "sdn": SDNMode, "mixed": MixedMode}
    if name not in modes:
        raise ArgumentError(f"unknown `mode` {name!r}: choose one of {', '.join(MODES)}")
    if distill and name == "cnn":
        raise ArgumentError(
            "`distill` distils the final output into the ICs: a CNN has none (mode ic-only, sdn or mixed)"
        )
    mode = modes[name]()
    mode.label_smoothing, mode.distill, mode.distill_temperature = label_smoothing, distill, distill_temperature
    return mode


def mode_of(name: str, recipe: Recipe) -> Mode:
    """The mode object of a run: ``name`` with its recipe's loss settings."""
    return make_mode(name, recipe.label_smoothing, recipe.distill, recipe.distill_temperature)
