"""The plain CNN type shared by every backbone family: a stem, an ordered list of blocks, a head."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ArgumentError
from .layout import FeatureLayout


class CNN(nn.Module):
    """A plain CNN written as ``head(blocks[-1](...blocks[0](stem(x))))``.

    The block boundaries are where internal classifiers may be attached; ``ic_positions`` holds
    the paper's default placement (indices into ``blocks`` whose output feeds an IC).
    """

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        head: nn.Module,
        *,
        arch: str,
        num_classes: int,
        image_size: int,
        ic_positions: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.ic_positions = tuple(ic_positions)
        # where a model that was not declared here came from (zoo, name, cut points); see convert.py
        self.source: dict | None = None
        # each block's output layout where the graph said (a traced model); else the shape decides
        self.layouts: tuple[FeatureLayout, ...] | None = None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for a batch that this network cannot take."""
        expected = (3, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ArgumentError(
                f"{self.arch} expects images shaped [N, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {list(x.shape)}: resize the images to {self.image_size}x{self.image_size} RGB"
            )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output for ``x`` (used to size heads and to count costs)."""
        out = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def mask_to_positions(*masks: list[int] | str) -> tuple[int, ...]:
    """Turn the paper's 0/1 masks (one per stage, concatenated) into block indices."""
    flat: list[int] = []
    for m in masks:
        flat.extend(int(c) for c in (m.split() if isinstance(m, str) else m))
    return tuple(i for i, bit in enumerate(flat) if bit)


def require_size(arch: str, image_size: int, allowed: tuple[int, ...]) -> None:
    """Refuse an input size that a paper backbone was not defined for."""
    if image_size not in allowed:
        sizes = " or ".join(str(s) for s in allowed)
        raise ArgumentError(
            f"{arch} takes {sizes} px images, not {image_size} px: resize the data (`image_size`) "
            f"or pick another architecture"
        )
