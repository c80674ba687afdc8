"""VGG-16 with batch norm, as in the SDN paper (spec section 4)."""

from __future__ import annotations

import math

from torch import nn

from .base import CNN, mask_to_positions, require_size
from .registry import register

_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_POOL_AFTER = {1, 3, 6, 9, 12}  # 2x2 max-pool after conv layers 2, 4, 7, 10, 13
_FC = {32: (512, 512), 64: (2048, 1024)}  # hidden FC width, then the head's middle width
_MASK = "0 1 0 1 0 1 1 0 1 1 0 0 0 0"  # 13 conv blocks + 1 hidden FC block


def _conv_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def vgg(num_classes: int, image_size: int, *, arch: str = "vgg16_bn") -> CNN:
    """VGG-16-BN: 13 conv blocks and one hidden FC block (the blocks ICs may follow), then the head."""
    require_size(arch, image_size, (32, 64))
    blocks: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(_CHANNELS):
        blocks.append(_conv_block(cin, cout, i in _POOL_AFTER))
        cin = cout
    hidden, middle = _FC[image_size]
    flat = cin * (image_size // 32) ** 2
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5)))
    head = nn.Sequential(nn.Linear(hidden, middle), nn.Dropout(0.5), nn.Linear(middle, num_classes))
    model = CNN(
        nn.Identity(),
        blocks,
        head,
        arch=arch,
        num_classes=num_classes,
        image_size=image_size,
        ic_positions=mask_to_positions(_MASK),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


@register("vgg16_bn")
def vgg16_bn(num_classes: int, image_size: int) -> CNN:
    """VGG-16-BN (Simonyan & Zisserman 2015) at 32 or 64 px."""
    return vgg(num_classes, image_size)
