"""The internal classifier (IC) heads: the paper's for feature maps (spec section 3), and the one the
transformer literature uses for tokens and channels-last maps."""

from __future__ import annotations

import torch
from torch import nn

from ..core.catalog import TOKEN_POOLS
from ..core.errors import ArgumentError
from .layout import HWC, TOKENS, shape_layout


class ICHead(nn.Module):
    """Classify an intermediate feature map (the paper's head).

    For a feature map ``[N, C, s, s]`` with ``s >= 4`` the map is reduced to about 4x4 by *mixed*
    pooling, ``a * maxpool_r(x) + (1 - a) * avgpool_r(x)`` with ``r = s // 4`` and one learned
    scalar ``a`` per head, then flattened into one linear layer. Smaller maps, and flat features
    (``[N, C]``, the VGG FC block), go straight to the linear layer. A non-square map
    ``[N, C, h, w]`` is pooled by ``(max(1, h // 4), max(1, w // 4))``, the same rule per side.
    ``kernel`` is that pair, or ``(0, 0)`` without pooling.
    """

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        if len(feature_shape) == 3 and max(feature_shape[1:]) >= 4:
            channels, h, w = feature_shape
            self.kernel = (max(1, h // 4), max(1, w // 4))
            self.alpha = nn.Parameter(torch.rand(1))
            in_features = channels * (h // self.kernel[0]) * (w // self.kernel[1])
        else:
            self.kernel = (0, 0)
            self.alpha = None
            in_features = 1
            for d in feature_shape:
                in_features *= d
        self.linear = _linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            r = self.kernel
            x = self.alpha * nn.functional.max_pool2d(x, r) + (1 - self.alpha) * nn.functional.avg_pool2d(x, r)
        return self.linear(torch.flatten(x, 1))


class TokenHead(nn.Module):
    """Classify tokens ``[N, T, D]`` or a channels-last map ``[N, H, W, C]`` (its positions as tokens):
    LayerNorm over the channels, then the class token (``pool="cls"``, token 0) or the mean of the
    patch tokens (``pool="mean"``, the ``prefix`` class/distillation tokens left out), then a linear
    layer: the head of LGViT, ZTW's ViT heads and timm's own classifiers. ``pooled`` names the axes
    reduced, counted without the batch."""

    def __init__(
        self, feature_shape: tuple[int, ...], num_classes: int, layout: str, prefix: int = 0, pool: str = "mean"
    ) -> None:
        super().__init__()
        if pool not in TOKEN_POOLS:
            raise ArgumentError(f"unknown `token_pool` {pool!r}: choose one of {', '.join(TOKEN_POOLS)}")
        if pool == "cls" and (layout != TOKENS or prefix < 1):
            raise ArgumentError(
                f"the feature {list(feature_shape)} has no class token to pool: use the `token_pool` mean"
            )
        self.feature_shape, self.layout, self.prefix, self.pool = tuple(feature_shape), layout, prefix, pool
        channels = feature_shape[-1]
        self.norm = nn.LayerNorm(channels)
        self.linear = _linear(channels, num_classes)

    @property
    def pooled(self) -> tuple[int, ...]:
        return (0, 1) if self.layout == HWC else (0,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.layout == HWC:
            x = x.mean((1, 2))
        elif self.pool == "cls":
            x = x[:, 0]
        else:
            x = x[:, self.prefix :].mean(1)
        return self.linear(x)


def _linear(in_features: int, num_classes: int) -> nn.Linear:
    linear = nn.Linear(in_features, num_classes)
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)
    return linear


def make_head(
    feature_shape: tuple[int, ...],
    num_classes: int,
    layout: str | None = None,
    prefix: int = 0,
    token_pool: str = "mean",
) -> nn.Module:
    """The IC head for a feature of ``feature_shape`` (without batch) and ``layout`` (default: what the
    shape suggests): the paper's mixed pooling for ``[C, H, W]`` maps and flat features, a
    :class:`TokenHead` for tokens and channels-last maps."""
    layout = shape_layout(tuple(feature_shape)) if layout is None else layout
    if layout in (TOKENS, HWC):
        return TokenHead(tuple(feature_shape), num_classes, layout, prefix, token_pool)
    return ICHead(tuple(feature_shape), num_classes)
