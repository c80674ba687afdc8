"""A small CNN for the embedded default data set and fast tests (not from the paper)."""

from __future__ import annotations

from torch import nn

from ..core.errors import ArgumentError
from .base import CNN
from .registry import register

_CFG = ((16, False), (32, True), (32, False), (64, True), (64, False))


@register("small")
def small(num_classes: int, image_size: int) -> CNN:
    """Five conv-BN-ReLU blocks (16-64 channels, two max-pools), an IC after each of the first four."""
    if image_size < 8 or image_size % 4:
        raise ArgumentError(f"small takes images of at least 8 px in multiples of 4, not {image_size} px")
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    blocks: list[nn.Module] = []
    cin = 16
    for cout, pool in _CFG:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        blocks.append(nn.Sequential(*layers))
        cin = cout
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
    return CNN(
        stem, blocks, head, arch="small", num_classes=num_classes, image_size=image_size, ic_positions=(0, 1, 2, 3)
    )
