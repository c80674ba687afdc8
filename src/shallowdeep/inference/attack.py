"""DeepSloth's slowdown attack (Hong, Kaya, Modoranu, Dumitras, ICLR 2021): small perturbations that push
every IC towards a uniform answer, so that inputs stop exiting early and run to the end.

The attack minimises, by projected gradient steps in pixel space ([0, 1]), the sum over the ICs (not
the final output) of the cross-entropy between each IC's softmax and the uniform distribution, within
an L-infinity or L2 ball around the clean image, per input or as one universal perturbation. Attacked
images come back as 8-bit images (what a deployed model receives), rounded so they stay in the ball.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from ..core.errors import ArgumentError
from ..core.io import JSONObject
from ..data.augmentation import normalize
from ..models.sdn import outputs_of

NORMS = ("linf", "l2")
# DeepSloth's defaults (attacks/ours_linf.py): per input, 30 steps of 0.002 within 0.03125 (8/256) from
# a uniform start of one step; universal, 20 steps of 0.005 on one batch of 128 training images from a
# uniform start in the ball. Its L2 attack is DDN-like (the norm shrinks from 1.0); ours is plain PGD at
# the fixed bound 1.0 with normalised-gradient steps of 0.1 (2.5 x bound / steps, the usual PGD rule).
DEFAULTS = {
    ("linf", False): (0.03125, 30, 0.002),
    ("linf", True): (0.03125, 20, 0.005),
    ("l2", False): (1.0, 30, 0.1),
    ("l2", True): (1.0, 20, 0.1),
}
CRAFT_INPUTS = 128  # DeepSloth crafts a universal perturbation on one training batch


@dataclass(frozen=True)
class SlowdownAttack:
    """One attack setting: the ``norm`` (``linf``, ``l2``), the bound ``epsilon`` (pixels in [0, 1]),
    ``steps`` and ``step_size`` (``None``: DeepSloth's defaults, :data:`DEFAULTS`), ``universal`` (one
    perturbation for every input, crafted on the first ``craft_inputs`` training images) and the
    ``seed`` of the random start."""

    norm: str = "linf"
    epsilon: float | None = None
    steps: int | None = None
    step_size: float | None = None
    universal: bool = False
    craft_inputs: int = CRAFT_INPUTS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ArgumentError(f"`norm` is linf or l2, not {self.norm!r}")
        eps, steps, step = DEFAULTS[(self.norm, bool(self.universal))]
        object.__setattr__(self, "epsilon", eps if self.epsilon is None else self.epsilon)
        object.__setattr__(self, "steps", steps if self.steps is None else self.steps)
        object.__setattr__(self, "step_size", step if self.step_size is None else self.step_size)
        top = 1.0 if self.norm == "linf" else 1e4
        for name in ("epsilon", "step_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= top:
                raise ArgumentError(
                    f"`{name}` is a {self.norm} distance in pixels of [0, 1], in (0, {top:g}]; got {v!r}"
                )
        for name, most in (("steps", 100_000), ("craft_inputs", 10_000_000), ("seed", 2**63 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if name == "seed" else 1) <= v <= most:
                raise ArgumentError(f"`{name}` is a whole number in {0 if name == 'seed' else 1}..{most}, got {v!r}")
        if not isinstance(self.universal, bool):
            raise ArgumentError(f"`universal` is true or false, got {self.universal!r}")

    @property
    def label(self) -> str:
        """The setting's name in file names and reports: ``slowdown-linf-0.03125`` (``-universal``)."""
        return f"slowdown-{self.norm}-{self.epsilon:g}" + ("-universal" if self.universal else "")

    def to_json(self) -> JSONObject:
        return {
            "attack": "deepsloth",
            "norm": self.norm,
            "epsilon": self.epsilon,
            "steps": self.steps,
            "step_size": self.step_size,
            "universal": self.universal,
            "craft_inputs": self.craft_inputs,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, d: object) -> SlowdownAttack:
        """A setting as :meth:`to_json` wrote it, checked."""
        if not isinstance(d, dict) or d.get("attack") != "deepsloth":
            raise ArgumentError("not a DeepSloth attack setting (expected a JSON object with attack=deepsloth)")
        keys = ("norm", "epsilon", "steps", "step_size", "universal", "craft_inputs", "seed")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ArgumentError(f"the attack setting lacks {', '.join(missing)}")
        return cls(**{k: d[k] for k in keys})


def uniform_cross_entropy(logits: list[torch.Tensor]) -> torch.Tensor:
    """DeepSloth's objective: the mean over inputs, summed over ``logits`` (the ICs'), of the
    cross-entropy between each softmax and the uniform distribution (lowest when every IC is unsure)."""
    return sum(-torch.log_softmax(z.float(), dim=1).mean(dim=1).mean() for z in logits)


def _project(delta: torch.Tensor, attack: SlowdownAttack) -> torch.Tensor:
    """``delta`` (``[N, H, W, 3]``) put back in the attack's ball, per input."""
    if attack.norm == "linf":
        return delta.clamp(-attack.epsilon, attack.epsilon)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (attack.epsilon / norms).clamp(max=1.0).view(-1, 1, 1, 1)


def _step(delta: torch.Tensor, grad: torch.Tensor, attack: SlowdownAttack) -> torch.Tensor:
    """One descent step: the gradient's sign (L-infinity) or its per-input unit direction (L2)."""
    if attack.norm == "linf":
        return delta - attack.step_size * grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta - attack.step_size * grad / norms


def _start(shape: tuple[int, ...], attack: SlowdownAttack, generator: torch.Generator) -> torch.Tensor:
    """The random start: uniform within one step (per input) or within the ball (universal) for
    L-infinity, as DeepSloth; a random direction of that length for L2."""
    radius = attack.epsilon if attack.universal else attack.step_size
    if attack.norm == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1) * radius
    d = torch.randn(shape, generator=generator)
    return d * (radius / d.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *[1] * (len(shape) - 1))


def _descend(model, clean: torch.Tensor, delta: torch.Tensor, attack: SlowdownAttack, mean, std) -> torch.Tensor:
    """``attack.steps`` projected steps on ``delta`` (per input ``[N, H, W, 3]`` or universal
    ``[1, H, W, 3]``) against the clean ``[N, H, W, 3]`` images in [0, 1]."""
    for _ in range(attack.steps):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            x = (clean + delta).clamp(0, 1)
            loss = uniform_cross_entropy(outputs_of(model, normalize(x, mean, std))[:-1])
            (grad,) = torch.autograd.grad(loss, delta)
        delta = _project(_step(delta.detach(), grad, attack), attack)
        delta = (clean + delta).clamp(0, 1) - clean if not attack.universal else delta
    return delta.detach()


def as_images(clean: torch.Tensor, delta: torch.Tensor, attack: SlowdownAttack) -> torch.Tensor:
    """The attacked 8-bit images (``[N, H, W, 3]`` uint8) of clean uint8 ``clean`` and the float
    perturbation ``delta``, rounded to the nearest level and then kept in the ball: L-infinity clips
    the rounded change to the whole levels the bound allows; L2 falls back to rounding towards the
    clean value (never longer than ``delta``) for an input that rounding took outside."""
    c = clean.float()
    moved = (c + 255 * delta).round().clamp(0, 255)
    if attack.norm == "linf":
        m = math.floor(255 * attack.epsilon + 1e-6)
        return torch.minimum(torch.maximum(moved, c - m), c + m).to(torch.uint8)
    toward = (c + torch.trunc(255 * delta.expand_as(c))).clamp(0, 255)
    over = ((moved - c) / 255).flatten(1).norm(dim=1) > attack.epsilon
    return torch.where(over.view(-1, 1, 1, 1), toward, moved).to(torch.uint8)


@dataclass(frozen=True)
class Attacked:
    """The attacked images of a split (uint8 ``[N, H, W, 3]``, in the split's order) and, for a
    universal attack, the perturbation (float ``[H, W, 3]`` in pixels of [0, 1])."""

    images: torch.Tensor
    perturbation: torch.Tensor | None


def _batches(n: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def slowdown(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    attack: SlowdownAttack,
    *,
    craft: torch.Tensor | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Attacked:
    """Attack uint8 ``images`` (``[N, H, W, 3]``) against an SDN ``model`` that takes images normalised
    by ``mean``/``std``. A universal attack is crafted on the uint8 ``craft`` images (the attacker's
    own data: training images, never the images attacked) and then added to every image."""
    from tqdm import tqdm

    if len(outputs_of(model, torch.zeros(1, 3, images.shape[1], images.shape[2], device=device))) < 2:
        raise ArgumentError("a slowdown attack needs an SDN (a network with ICs): this run is a CNN")
    was_training = model.training
    model.eval().to(device)
    wanted = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # gradients flow to the pixels only
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(attack.seed)
    m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    try:
        if attack.universal:
            if craft is None or not len(craft):
                raise ArgumentError("a universal attack needs images to craft it on (`craft`)")
            delta = _start((1, *images.shape[1:]), attack, gen).to(device)
            for part in _batches(len(craft), batch_size):
                delta = _descend(model, craft[part].to(device).float() / 255, delta, attack, m, s)
            return Attacked(as_images(images, delta.cpu(), attack), delta[0].cpu())
        out = []
        bar = tqdm(_batches(len(images), batch_size), desc="attacking", leave=False, file=sys.stderr,
                   disable=None if progress else True)  # fmt: skip
        for part in bar:
            clean = images[part].to(device).float() / 255
            delta = _descend(model, clean, _start(tuple(clean.shape), attack, gen).to(device), attack, m, s)
            out.append(as_images(images[part], delta.cpu(), attack))
        return Attacked(torch.cat(out) if out else images.clone(), None)
    finally:
        for p, w in zip(model.parameters(), wanted):
            p.requires_grad_(w)
        model.train(was_training)
