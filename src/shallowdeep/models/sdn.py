"""The SDN type: a CNN's blocks, the positions of its internal classifiers (ICs) and their heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import ArgumentError
from ..core.outputs import output_names  # noqa: F401  (re-exported: part of the model's vocabulary)
from .base import CNN
from .heads import make_head
from .layout import FeatureLayout, shape_layout


def feature_shapes(cnn: CNN) -> list[tuple[int, ...]]:
    """The shape (without batch) of every block's output, from one dry forward pass in eval mode."""
    was_training = cnn.training
    cnn.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, cnn.image_size, cnn.image_size, device=next(cnn.parameters()).device)
            return [tuple(f.shape[1:]) for f in cnn.features(x)]
    finally:
        cnn.train(was_training)


class SDN(nn.Module):
    """A CNN with ICs after some of its blocks; ``forward`` returns every output's logits.

    The outputs are ordered by depth: IC 0 … IC k-1, then the CNN's own final classifier. The CNN's
    modules are shared, not copied: ``sdn.cnn`` is the very network the SDN was made from.
    ``token_pool`` is how heads on tokens reduce them (``mean`` or ``cls``; default: what the CNN's
    source recorded, else ``mean``). With ``cascade`` (Zero Time Waste's cascade connections) every
    IC after the first also reads the previous IC's logits, detached: IC k's logits are its head's
    plus ``cascades[k - 1](logits of IC k - 1)``, a linear map that starts at zero (the plain IC),
    which is ZTW's concatenation of the previous output before the head's linear layer.
    """

    def __init__(
        self,
        cnn: CNN,
        positions: Sequence[int] | None = None,
        heads: Sequence[nn.Module] | None = None,
        token_pool: str | None = None,
        cascade: bool = False,
    ) -> None:
        super().__init__()
        positions = tuple(cnn.ic_positions if positions is None else positions)
        if list(positions) != sorted(set(positions)) or any(p < 0 or p >= len(cnn.blocks) - 1 for p in positions):
            raise ArgumentError(
                f"IC positions must be increasing block indices below {len(cnn.blocks) - 1} "
                f"(the last block feeds the final classifier), got {list(positions)}"
            )
        self.cnn = cnn
        self.positions = positions
        recorded = (cnn.source or {}).get("token_pool", "mean")
        self.token_pool: str = recorded if token_pool is None else token_pool
        if heads is None:
            shapes = feature_shapes(cnn)
            layouts = cnn.layouts or tuple(FeatureLayout(shape_layout(s)) for s in shapes)
            heads = [
                make_head(shapes[p], cnn.num_classes, layouts[p].axes, layouts[p].prefix, self.token_pool)
                for p in positions
            ]
            device = next(cnn.parameters()).device
            heads = [h.to(device) for h in heads]
        if len(heads) != len(positions):
            raise ValueError("one head per IC position")
        self.heads = nn.ModuleList(heads)
        self.cascade = bool(cascade)
        self.cascades = nn.ModuleList(_cascade_link(cnn) for _ in positions[1:]) if cascade else None

    @property
    def num_outputs(self) -> int:
        """ICs plus the final classifier."""
        return len(self.positions) + 1

    @property
    def arch(self) -> str:
        return self.cnn.arch

    @property
    def num_classes(self) -> int:
        return self.cnn.num_classes

    @property
    def image_size(self) -> int:
        return self.cnn.image_size

    def ic_parameters(self) -> list[nn.Parameter]:
        """The parameters that the CNN does not have."""
        return list(self.heads.parameters()) + (list(self.cascades.parameters()) if self.cascades else [])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.cnn.check_input(x)
        outputs, x = run_blocks(self.cnn.stem, self.cnn.blocks, self.positions, self.heads, x, self.cascades)
        outputs.append(self.cnn.head(x))
        return outputs

    def cut(self, k: int) -> CutSDN:
        """The network up to IC ``k`` (0-based), whose last output is IC k; modules are shared."""
        if not 0 <= k < len(self.positions):
            raise ArgumentError(f"this SDN has ICs 0..{len(self.positions) - 1}, cannot cut after IC {k}")
        return CutSDN(self, k)


class CutSDN(nn.Module):
    """An SDN truncated after IC k: returns the logits of ICs 0..k, the last being IC k."""

    def __init__(self, sdn: SDN, k: int) -> None:
        super().__init__()
        self.cnn_check = sdn.cnn.check_input
        self.stem = sdn.cnn.stem
        self.blocks = nn.ModuleList(sdn.cnn.blocks[: sdn.positions[k] + 1])
        self.positions = sdn.positions[: k + 1]
        self.heads = nn.ModuleList(sdn.heads[: k + 1])
        self.cascades = None if sdn.cascades is None else nn.ModuleList(sdn.cascades[:k])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.cnn_check(x)
        return run_blocks(self.stem, self.blocks, self.positions, self.heads, x, self.cascades)[0]


def _cascade_link(cnn: CNN) -> nn.Linear:
    link = nn.Linear(cnn.num_classes, cnn.num_classes)
    nn.init.zeros_(link.weight)
    nn.init.zeros_(link.bias)
    return link.to(next(cnn.parameters()).device)


def run_blocks(
    stem: nn.Module,
    blocks: Sequence[nn.Module],
    positions: Sequence[int],
    heads: Sequence[nn.Module],
    x: torch.Tensor,
    cascades: Sequence[nn.Module] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run ``stem`` and ``blocks`` on ``x``; return each IC's logits and the last block's output
    (with ``cascades``, IC k's logits plus its link from IC k - 1's, detached)."""
    outputs: list[torch.Tensor] = []
    k = 0
    x = stem(x)
    for i, block in enumerate(blocks):
        x = block(x)
        if k < len(positions) and positions[k] == i:
            z = heads[k](x)
            if cascades is not None and k > 0:
                z = z + cascades[k - 1](outputs[-1].detach())  # the previous IC learns nothing from IC k
            outputs.append(z)
            k += 1
    return outputs, x


def outputs_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output of a CNN (one) or an SDN (ICs then final) as a list."""
    out = model(x)
    return out if isinstance(out, list) else [out]


def num_outputs(model: nn.Module) -> int:
    """How many outputs ``model`` gives: an SDN's ICs plus its final one, a CNN's one."""
    return model.num_outputs if isinstance(model, SDN) else 1


def build_sdn(arch: str, num_classes: int, image_size: int) -> SDN:
    """Build an untrained SDN with the paper's IC placement for ``arch``."""
    from . import build_cnn

    return SDN(build_cnn(arch, num_classes, image_size))
