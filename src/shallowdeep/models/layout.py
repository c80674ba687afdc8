"""What the axes of an intermediate feature are: a channels-first map, a channels-last map, tokens, flat.

An IC head must pool a feature over its spatial (or token) axes and keep its channels. CNNs hand on
``[C, H, W]`` maps; vision transformers a sequence of tokens ``[T, D]``; timm's Swin, MaxViT and a few
other families channels-last maps ``[H, W, C]``. The shape alone cannot tell ``[C, H, W]`` from
``[H, W, C]``, so :func:`graph_layout` reads the traced graph: the layers that consume a feature (a
convolution or 2-D batch norm takes channels first; a LayerNorm or a Linear over the last axis takes
channels last) and, failing those, the layer that made it. Only where neither says anything does the
shape decide (a square pair of axes is the spatial one), then the paper's channels-first convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

CHW = "chw"  # [C, H, W]: a CNN's feature map (the paper's mixed pooling head)
HWC = "hwc"  # [H, W, C]: a channels-last map (pooled over H and W)
TOKENS = "tokens"  # [T, D]: a transformer's tokens (class token or token mean)
FLAT = "flat"  # [D] or anything else: straight to the linear layer
LAYOUTS = (CHW, HWC, TOKENS, FLAT)


@dataclass(frozen=True)
class FeatureLayout:
    """A feature's ``axes`` (one of :data:`LAYOUTS`) and, for tokens, the ``prefix`` class and
    distillation tokens before the patch grid."""

    axes: str
    prefix: int = 0


_CHANNELS_FIRST_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.InstanceNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.GroupNorm,
)
_CHANNELS_FIRST_FUNCTIONS = {
    torch.conv2d,
    nn.functional.conv2d,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_max_pool2d,
    nn.functional.batch_norm,
    torch.batch_norm,
    nn.functional.group_norm,
}
_LAST_AXIS_FUNCTIONS = {nn.functional.layer_norm, torch.layer_norm, nn.functional.linear}


def shape_layout(shape: tuple[int, ...]) -> str:
    """The layout a shape suggests without a graph: 2 axes are tokens, 3 a map (channels last when the
    first two axes are the square pair and the last is not), anything else flat."""
    if len(shape) == 2:
        return TOKENS
    if len(shape) == 3:
        c, h, w = shape
        return HWC if c == h and h != w else CHW
    return FLAT


def _vote(gm: fx.GraphModule, node: fx.Node, last: int) -> str | None:
    """What one layer that reads (or made) a 3-axis feature says about its channel axis."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.LayerNorm):  # timm's LayerNorm2d subclasses it and normalises channels first
            if type(m).__name__.endswith("2d"):
                return CHW
            return HWC if tuple(m.normalized_shape) == (last,) else None
        if isinstance(m, nn.Linear):  # a layer over the last axis: that axis is the channels
            return HWC if m.in_features == last else None
        if isinstance(m, _CHANNELS_FIRST_MODULES):
            return CHW
        return None
    if node.op == "call_function":
        if node.target in _CHANNELS_FIRST_FUNCTIONS:
            return CHW
        if node.target in _LAST_AXIS_FUNCTIONS:
            return HWC
    if _permute(node) == (0, 3, 1, 2):
        return HWC  # it reads channels last to make them first
    if _permute(node) == (0, 2, 3, 1):
        return CHW
    return None


def _made(gm: fx.GraphModule, node: fx.Node, last: int) -> str | None:
    """What the layer that made a 3-axis feature says about its channel axis."""
    if _permute(node) == (0, 2, 3, 1):
        return HWC
    if _permute(node) == (0, 3, 1, 2):
        return CHW
    if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Linear):
        m = gm.get_submodule(str(node.target))
        return HWC if m.out_features == last else None
    return _vote(gm, node, last)  # norms and convolutions keep the layout they read


def _permute(node: fx.Node) -> tuple[int, ...] | None:
    if node.op == "call_method" and node.target == "permute":
        args = node.args[1:]
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return tuple(d for d in dims if isinstance(d, int))
    if node.op == "call_function" and node.target is torch.permute:
        return tuple(node.args[1]) if len(node.args) > 1 and isinstance(node.args[1], (tuple, list)) else None
    return None


def graph_layout(gm: fx.GraphModule, node: fx.Node, shape: tuple[int, ...]) -> str:
    """The layout of ``node``'s output (``shape`` without batch) in the shape-annotated graph ``gm``:
    its consumers' vote, else its producer's, else :func:`shape_layout`."""
    if len(shape) != 3:
        return shape_layout(shape)
    last = shape[-1]

    def first(votes: Iterable[str | None]) -> str | None:
        return next((v for v in votes if v is not None), None)

    readers = [u for u in node.users if not reads_shape_only(u)]
    votes = [_vote(gm, u, last) for u in readers] + [_made(gm, node, last)]
    return first(votes) or shape_layout(shape)


def reads_shape_only(node: fx.Node) -> bool:
    """A use of a tensor that reads its size, not its values (``x.shape``, ``x.size()``)."""
    if node.op == "call_function" and node.target is getattr:
        return True
    return node.op == "call_method" and node.target in ("size", "dim")


def prefix_tokens(tokens: int, declared: int | None) -> int:
    """How many of ``tokens`` come before the patch grid (class and distillation tokens): the model's
    own count (timm's ``num_prefix_tokens``, torchvision's class token) where the rest is a square
    grid, else none where the tokens are one (a point before the class token joins, or after it is
    dropped), else the model's count, else none."""
    if declared and tokens > declared and _square(tokens - declared):
        return declared
    if _square(tokens):
        return 0
    return declared or 0


def token_grid(tokens: int, prefix: int) -> int | None:
    """The side of the square patch grid of ``tokens`` after ``prefix`` (``None``: not a square)."""
    return math.isqrt(tokens - prefix) if tokens > prefix and _square(tokens - prefix) else None


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def declared_prefix(model: nn.Module) -> int | None:
    """The class/distillation tokens a model says it has: timm's ``num_prefix_tokens``, or one for
    torchvision's ViT (a ``class_token`` parameter); ``None`` where it says nothing."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 64:
        return n
    return 1 if isinstance(getattr(model, "class_token", None), nn.Parameter) else None
