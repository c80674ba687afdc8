"""Any CNN becomes an SDN: the paper's backbones as declared, zoo and user models through the adapter.

``to_sdn(model)`` takes a :class:`CNN` (blocks declared, the paper's IC positions) or any image
classifier ``nn.Module``; the latter is traced into a chain of cut points (:mod:`.models.adapter`),
ICs are placed at the cut points closest to 15/30/45/60/75/90 % of its FLOPs (or at chosen
fractions, or at named cut points), and the model is split there into the same
``stem/blocks/head`` form, so training, analyses, the engine and costs treat every model alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ArgumentError
from ..core.io import JSONObject
from . import CNN, build_cnn, list_archs
from .adapter import PAPER_FRACTIONS, Chain, CutPoint, declared_chain, device_of, place, traced_chain
from .costs import flops
from .layout import FeatureLayout
from .sdn import SDN
from .zoo import ZooModel, is_zoo_name, load_backbone_weights, read_weights_file, zoo_model


@dataclass(frozen=True)
class Candidate:
    """A cut point an IC may follow, with the backbone's cumulative cost up to it (``relative``: / total);
    its JSON names the feature's layout (``chw``, ``hwc``, ``tokens``) and, for tokens, the class
    tokens before the patch grid (``prefix``)."""

    cut: CutPoint
    flops: float
    relative: float

    def to_json(self) -> JSONObject:
        return {
            "name": self.cut.name,
            "where": self.cut.where,
            "shape": list(self.cut.shape),
            "layout": self.cut.layout,
            "prefix": self.cut.prefix,
            "flops": self.flops,
            "relative": self.relative,
        }


@torch.no_grad()
def candidates(chain: Chain) -> list[Candidate]:
    """Every IC cut point of ``chain`` with its cumulative backbone FLOPs (one input)."""
    names = [c.name for c in chain.ic_cuts]
    segments = chain.split(names)
    x = torch.zeros(1, 3, chain.image_size, chain.image_size, device=device_of(chain.model))
    was = chain.model.training
    chain.model.eval()
    try:
        cumulative, total = [], 0.0
        for seg in segments:
            f, x = flops(seg, x)
            total += f
            cumulative.append(total)
    finally:
        chain.model.train(was)
    return [Candidate(c, cumulative[i], cumulative[i] / total if total else 0.0) for i, c in enumerate(chain.ic_cuts)]


def chain_of(
    model: nn.Module, image_size: int, blocks: Sequence[str] | None = None, leaf_modules: Sequence[type[nn.Module]] = ()
) -> Chain:
    """The :class:`Chain` of ``model``: traced, or from module names when ``blocks`` declares them."""
    if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise ArgumentError(f"`image_size` must be an integer in 8..1024 px, got {image_size!r}")
    return declared_chain(model, image_size, blocks) if blocks else traced_chain(model, image_size, leaf_modules)


def choose_cuts(
    chain: Chain,
    fractions: Sequence[float] | None = None,
    cuts: Sequence[str] | None = None,
    cands: Sequence[Candidate] | None = None,
) -> list[str]:
    """The cut points for the ICs: ``cuts`` by name, else those closest to ``fractions`` of the cost
    (``cands``: the chain's :func:`candidates`, when already counted)."""
    if cuts is not None and fractions is not None:
        raise ArgumentError("give IC `cuts` or `fractions`, not both")
    if cuts is not None:
        return [c.name for c in chain.find(cuts)]
    cands = candidates(chain) if cands is None else cands
    if not cands:
        raise ArgumentError(
            f"{type(chain.model).__name__} has no cut point where an IC can go (no block output in its graph "
            "carries everything later layers use): declare its blocks by module name (to_sdn(model, "
            "blocks=[...]), see docs/models.md), or choose another model"
        )
    picked = place([c.relative for c in cands], 1.0, PAPER_FRACTIONS if fractions is None else fractions)
    return [cands[i].cut.name for i in picked]


def chain_cnn(chain: Chain, cut_names: Sequence[str], arch: str, source: JSONObject) -> CNN:
    """The model of ``chain`` as a :class:`CNN` split at ``cut_names`` (one IC position after each)."""
    segments = chain.split(cut_names)
    cnn = CNN(
        nn.Identity(),
        segments[:-1],
        segments[-1],
        arch=arch,
        num_classes=chain.num_classes,
        image_size=chain.image_size,
        ic_positions=tuple(range(len(cut_names))),
    )
    cnn.source = source | {"cuts": list(cut_names)}
    ends = chain.find(cut_names) + [chain.head_cut]
    cnn.layouts = tuple(FeatureLayout(c.layout, c.prefix) for c in ends)
    return cnn


def to_sdn(
    model: nn.Module,
    image_size: int | None = None,
    *,
    positions: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
    cuts: Sequence[str] | None = None,
    blocks: Sequence[str] | None = None,
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> SDN:
    """Attach freshly initialised ICs to ``model``; its weights are shared, not copied.

    A :class:`CNN` keeps its declared blocks (``positions`` index them; default: the paper's). Any
    other classifier is traced at ``image_size`` px and split at the cut points chosen by
    ``cuts`` (names, see :func:`candidates`) or ``fractions`` of its FLOPs (default: the paper's
    15/30/45/60/75/90 %); ``blocks`` declares the parts by module name for a model that cannot be
    traced. The SDN's final output equals ``model(x)``.
    """
    if isinstance(model, SDN):
        raise ArgumentError("this model is already an SDN")
    if isinstance(model, CNN):
        if fractions is not None or cuts is not None or blocks is not None:
            raise ArgumentError(f"{model.arch} declares its blocks: choose its IC `positions` (block indices)")
        return SDN(model, positions)
    if positions is not None:
        raise ArgumentError("IC `positions` index a declared CNN's blocks: for this model give `cuts` or `fractions`")
    if image_size is None:
        raise ArgumentError("`image_size` is needed to trace a model and count its FLOPs (e.g. 224)")
    return SDN(module_cnn(model, image_size, fractions=fractions, cuts=cuts, blocks=blocks, leaf_modules=leaf_modules))


def module_arch(model: nn.Module) -> str:
    """The architecture name a user's own module goes by (``module:ClassName``)."""
    return f"module:{type(model).__name__}"


def module_cnn(
    model: nn.Module,
    image_size: int,
    *,
    fractions: Sequence[float] | None = None,
    cuts: Sequence[str] | None = None,
    blocks: Sequence[str] | None = None,
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> CNN:
    """A user's own classifier split for ICs; its source records the class name, never its code."""
    chain = chain_of(model, image_size, blocks, leaf_modules)
    source = {
        "kind": "module",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "blocks": list(blocks) if blocks else None,
    }
    return chain_cnn(chain, choose_cuts(chain, fractions, cuts), module_arch(model), source)


def build_model(
    arch: str,
    num_classes: int,
    image_size: int | None,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    cuts: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
) -> tuple[CNN, ZooModel | None]:
    """The CNN ``arch`` (a paper name or ``torchvision:NAME`` / ``timm:NAME``) for ``num_classes``.

    For a zoo model: ``pretrained`` loads the zoo's weights, ``weights`` a file's; the split is at
    ``cuts`` when given (what a run folder records), else placed by ``fractions`` of the FLOPs.
    Returns the zoo model too (its normalisation and notes), or ``None`` for a paper backbone.
    """
    if not is_zoo_name(arch):
        if pretrained or weights or cuts or fractions:
            raise ArgumentError(
                f"{arch} is one of the paper's backbones: `pretrained`, `weights` and IC placement "
                "options are for zoo models (torchvision:NAME, timm:NAME)"
            )
        if arch not in list_archs():
            raise ArgumentError(
                f"unknown `arch` {arch!r}: choose one of {', '.join(list_archs())}, or a zoo "
                "model torchvision:NAME or timm:NAME"
            )
        return build_cnn(arch, num_classes, 32 if image_size is None else image_size), None
    if pretrained and weights:
        raise ArgumentError("give `pretrained` or `weights`, not both")
    zm = zoo_model(arch, num_classes, pretrained, image_size)
    weights_sha = None
    if weights:
        from ..core.io import sha256_file

        zm.notes += load_backbone_weights(zm.module, read_weights_file(weights), str(weights))
        weights_sha = sha256_file(weights)
        if zm.mean is None:
            from .zoo import IMAGENET_MEAN, IMAGENET_STD

            zm.mean, zm.std = IMAGENET_MEAN, IMAGENET_STD  # trained weights came with the zoo's normalisation
    size = zm.input_size if image_size is None else image_size
    chain = chain_of(zm.module, size)
    names = choose_cuts(chain, fractions, cuts)
    source = {"kind": "zoo", "arch": arch, "pretrained": bool(pretrained), "weights_sha256": weights_sha}
    return chain_cnn(chain, names, arch, source), zm
