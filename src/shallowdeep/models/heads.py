"""The internal classifier (IC) head of the paper (spec section 3)."""

from __future__ import annotations

import torch
from torch import nn


class ICHead(nn.Module):
    """Classify an intermediate feature.

    For a feature map ``[N, C, s, s]`` with ``s >= 4`` the map is reduced to about 4x4 by *mixed*
    pooling, ``a * maxpool_r(x) + (1 - a) * avgpool_r(x)`` with ``r = s // 4`` and one learned
    scalar ``a`` per head, then flattened into one linear layer. Smaller maps, and flat features
    (``[N, C]``, the VGG FC block; ``[N, L, C]`` tokens), go straight to the linear layer. A
    non-square map ``[N, C, h, w]`` is pooled by ``(max(1, h // 4), max(1, w // 4))``, the same rule
    per side. ``kernel`` is that pair, or ``(0, 0)`` without pooling.
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
        self.linear = nn.Linear(in_features, num_classes)
        nn.init.normal_(self.linear.weight, 0.0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            r = self.kernel
            x = self.alpha * nn.functional.max_pool2d(x, r) + (1 - self.alpha) * nn.functional.avg_pool2d(x, r)
        return self.linear(torch.flatten(x, 1))
