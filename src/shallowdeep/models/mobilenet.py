"""MobileNet (v1) for small images, as in the SDN paper (spec section 4)."""

from __future__ import annotations

from torch import nn

from .base import CNN, mask_to_positions, require_size
from .registry import register

# (output channels, stride) of the 13 depthwise-separable blocks
_CFG = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
_MASK = "0 0 1 0 1 0 1 0 1 0 0 1 0"  # the reference mask: 5 ICs


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register("mobilenet")
def mobilenet(num_classes: int, image_size: int) -> CNN:
    """MobileNet v1 (Howard et al. 2017) at 32 or 64 px."""
    require_size("mobilenet", image_size, (32, 64))
    stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
    blocks: list[nn.Module] = []
    cin = 32
    for cout, stride in _CFG:
        blocks.append(_separable(cin, cout, stride))
        cin = cout
    head = nn.Sequential(nn.AvgPool2d(image_size // 16), nn.Flatten(), nn.Linear(cin, num_classes))
    return CNN(
        stem,
        blocks,
        head,
        arch="mobilenet",
        num_classes=num_classes,
        image_size=image_size,
        ic_positions=mask_to_positions(_MASK),
    )
