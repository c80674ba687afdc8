"""Wide-ResNet-32-4 with pre-activation blocks, as in the SDN paper (spec section 4)."""

from __future__ import annotations

import torch
from torch import nn

from .base import CNN, mask_to_positions, require_size
from .registry import register

_MASKS = ("0 0 1 0 1", "0 1 0 1 0", "1 0 1 0 0")


class WideBlock(nn.Module):
    """Pre-activation wide block; its output is the residual sum (what the IC sees)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.Dropout(dropout),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the residual branch's first ReLU is in-place on a BN output, never on x itself
        return self.residual(x) + self.shortcut(x)


def wide_resnet(
    num_classes: int, image_size: int, *, depth: int = 32, widen: int = 4, dropout: float = 0.3, arch: str = "wrn32_4"
) -> CNN:
    """WRN-depth-widen: three stages of (depth - 2) / 6 wide blocks at 16k/32k/64k channels."""
    require_size(arch, image_size, (32, 64))
    n = (depth - 2) // 6
    stem = nn.Conv2d(3, 16, 3, stride=1 if image_size == 32 else 2, padding=1)
    blocks: list[nn.Module] = []
    cin = 16
    for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
        for i in range(n):
            blocks.append(WideBlock(cin, width, 2 if stage > 0 and i == 0 else 1, dropout))
            cin = width
    head = nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AvgPool2d(8), nn.Flatten(), nn.Linear(cin, num_classes)
    )
    model = CNN(
        stem,
        blocks,
        head,
        arch=arch,
        num_classes=num_classes,
        image_size=image_size,
        ic_positions=mask_to_positions(*_MASKS),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


@register("wrn32_4")
def wrn32_4(num_classes: int, image_size: int) -> CNN:
    """Wide-ResNet-32-4 (Zagoruyko & Komodakis 2016) at 32 or 64 px (stride-2 stem at 64 px)."""
    return wide_resnet(num_classes, image_size)
