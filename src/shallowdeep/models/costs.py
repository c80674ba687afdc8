"""FLOPs of every SDN output, counted with PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts convolutions and matrix products (a multiply and
an add as two operations), which is what the reference profiler's figures are made of. Element-wise
work (BN, ReLU, pooling) is not counted by either in any amount that moves the relative positions.

One difference matters: the reference profiler counts a grouped (depthwise) convolution as if it
were dense, so its MobileNet figures are about 8x the true count and its IC positions shift by up
to 5 points. ``convention="torch"`` (the default) gives the true count; ``convention="reference"``
reproduces the reference's figures by counting grouped convolutions as dense.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..core.errors import ArgumentError
from .base import CNN
from .sdn import SDN


@dataclass(frozen=True)
class Costs:
    """Cumulative FLOPs up to each output (ICs on the way included) and of the plain CNN."""

    outputs: tuple[float, ...]
    cnn: float

    @property
    def relative(self) -> tuple[float, ...]:
        """Each output's cumulative cost divided by the plain CNN's cost."""
        return tuple(c / self.cnn for c in self.outputs)

    def to_json(self) -> dict:
        return {"outputs": list(self.outputs), "cnn": self.cnn}

    @classmethod
    def from_json(cls, d: dict) -> Costs:
        return cls(tuple(float(c) for c in d["outputs"]), float(d["cnn"]))


CONVENTIONS = ("torch", "reference")


def _dense_conv_flop(
    x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kwargs
) -> int:
    # the reference profiler's rule: every output channel sees every input channel (groups ignored)
    w_dense = [w_shape[0], x_shape[1], *w_shape[2:]]
    return conv_flop_count(x_shape, w_dense, out_shape, transposed=transposed)


def flops(module: nn.Module, x: torch.Tensor, convention: str = "torch") -> tuple[int, torch.Tensor]:
    """FLOPs of ``module(x)`` (a multiply and an add count two) and its output."""
    mapping = {torch.ops.aten.convolution: _dense_conv_flop} if convention == "reference" else None
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        y = module(x)
    return counter.get_total_flops(), y


# counts already made, per model object: an engine is built per calibration, a run's records and its
# engine count the same model (counting runs every layer under FlopCounterMode, about 40 % of
# building an engine on the CPU); the key holds every module's identity and type and every
# parameter's shape, so a model whose layers were replaced is counted again
_COUNTED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Costs]] = weakref.WeakKeyDictionary()


def output_costs(model: SDN | CNN, convention: str = "torch") -> Costs:
    """Count the FLOPs of one input through ``model``: per output cumulative, and the plain CNN's.

    ``convention`` is ``"torch"`` (true counts) or ``"reference"`` (grouped convs counted as dense).
    """
    if convention not in CONVENTIONS:
        raise ArgumentError(f"unknown FLOP `convention` {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    key = (convention, _structure(model))
    known = _COUNTED.get(model)
    if known is not None and known[0] == key:
        return known[1]
    costs = _count(model, convention)
    _COUNTED[model] = (key, costs)
    return costs


def _structure(model: SDN | CNN) -> tuple:
    """What a count depends on: the input size, the IC positions, the modules and parameter shapes."""
    cnn = model.cnn if isinstance(model, SDN) else model
    positions = tuple(model.positions) if isinstance(model, SDN) else ()
    modules = tuple((id(m), type(m)) for m in model.modules())
    return cnn.image_size, positions, modules, tuple(tuple(p.shape) for p in model.parameters())


@torch.no_grad()
def _count(model: SDN | CNN, convention: str) -> Costs:
    cnn = model.cnn if isinstance(model, SDN) else model
    positions = model.positions if isinstance(model, SDN) else ()
    heads = list(model.heads) if isinstance(model, SDN) else []
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, cnn.image_size, cnn.image_size, device=next(cnn.parameters()).device)
        total, x = flops(cnn.stem, x, convention)
        cumulative: list[float] = []
        ic_total = 0
        k = 0
        for i, block in enumerate(cnn.blocks):
            f, x = flops(block, x, convention)
            total += f
            if k < len(positions) and positions[k] == i:
                ic_total += flops(heads[k], x, convention)[0]
                cumulative.append(float(total + ic_total))
                k += 1
        head = flops(cnn.head, x, convention)[0]
        cumulative.append(float(total + ic_total + head))
        return Costs(tuple(cumulative), float(total + head))
    finally:
        model.train(was_training)
