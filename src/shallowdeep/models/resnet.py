"""ResNet-56 for CIFAR-sized inputs, as in the SDN paper (spec section 4)."""

from __future__ import annotations

import torch
from torch import nn

from .base import CNN, mask_to_positions, require_size
from .registry import register

_MASKS = ("0 0 0 1 0 0 0 1 0", "0 0 1 0 0 0 1 0 0", "0 1 0 0 0 1 0 0 0")


class BasicBlock(nn.Module):
    """A basic residual block whose output is the residual *sum*, before the ReLU.

    The reference block ends with ``relu(residual + shortcut)`` and feeds its IC the sum before that
    ReLU. Moving the ReLU to the start of the next block (and into the final head) computes the
    same function and makes every block output exactly what an IC should see. ``relu`` is
    idempotent, so the first block may apply it to the stem's already rectified output.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        # a module, not torch.relu, so that tools that swap ReLUs (guided backprop) see it; never
        # in place: the input is the previous block's output, which an IC may also read
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.residual(x) + self.shortcut(x)


def resnet(num_classes: int, image_size: int, *, depth: int = 56, arch: str = "resnet56") -> CNN:
    """CIFAR ResNet of ``depth = 6n + 2`` layers: three stages of n basic blocks at 16/32/64 channels."""
    require_size(arch, image_size, (32, 64))
    n = (depth - 2) // 6
    stem = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=1 if image_size == 32 else 2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    )
    blocks: list[nn.Module] = []
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            blocks.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width
    head = nn.Sequential(nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(), nn.Linear(cin, num_classes))
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
    return model


@register("resnet56")
def resnet56(num_classes: int, image_size: int) -> CNN:
    """ResNet-56 (He et al. 2016) at 32 or 64 px (stride-2 stem at 64 px)."""
    return resnet(num_classes, image_size)
