"""FLOPs per output from PyTorch's counter, against the spec's reference positions."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shallowdeep import build_cnn, build_sdn, list_archs, output_costs

# spec section 2: the reference profiler's cumulative GFLOPs per output, then the plain CNN's
REFERENCE = {
    "resnet56": ([0.0389, 0.0770, 0.1128, 0.1507, 0.1865, 0.2243, 0.2527], 0.2526),
    "vgg16_bn": ([0.0795, 0.1930, 0.3064, 0.3820, 0.4955, 0.5711, 0.6288], 0.6283),
    "wrn32_4": ([0.4004, 0.7032, 1.0857, 1.3882, 1.7705, 2.0727, 2.3750], 2.3746),
    "mobilenet": ([0.1261, 0.2281, 0.3300, 0.4897, 0.6712, 0.7510], 0.7504),
}


@pytest.mark.parametrize("arch", ["resnet56", "vgg16_bn", "wrn32_4"])
def test_relative_costs_within_one_point_of_spec(arch):
    costs = output_costs(build_sdn(arch, 10, 32))
    ref, ref_cnn = REFERENCE[arch]
    for ours, theirs in zip(costs.relative, ref):
        assert abs(100 * ours - 100 * theirs / ref_cnn) < 1.0
    assert costs.cnn / 1e9 == pytest.approx(ref_cnn, rel=0.01)


@pytest.mark.parametrize("arch", list_archs())
@pytest.mark.parametrize("convention", ["torch", "reference"])
def test_costs_increase_with_depth(arch, convention):
    costs = output_costs(build_sdn(arch, 10, 32), convention)
    assert all(a < b for a, b in zip(costs.outputs, costs.outputs[1:]))
    assert costs.relative[-2] < 1.0 < costs.relative[-1]  # the last IC is cheaper than the CNN; final pays every IC


def test_mobilenet_reference_convention_matches_spec_and_true_count_differs():
    sdn = build_sdn("mobilenet", 10, 32)
    ref, ref_cnn = REFERENCE["mobilenet"]
    reference = output_costs(sdn, "reference")
    for ours, theirs in zip(reference.relative, ref):
        assert abs(100 * ours - 100 * theirs / ref_cnn) < 1.0
    true = output_costs(sdn)
    # depthwise convs really cost 1/groups of a dense one: the true total is far lower
    assert true.cnn < reference.cnn / 5


def test_counts_equal_hand_count_for_a_plain_conv_net():
    torch.manual_seed(0)
    cnn = build_cnn("small", 10, 32)
    costs = output_costs(cnn)
    # small: 3x3 convs 3->16 @32, 16->16 @32, 16->32 @32, 32->32 @16, 32->64 @16, 64->64 @8; linear 64->10
    macs = (
        9
        * (
            3 * 16 * 32 * 32
            + 16 * 16 * 32 * 32
            + 16 * 32 * 32 * 32
            + 32 * 32 * 16 * 16
            + 32 * 64 * 16 * 16
            + 64 * 64 * 8 * 8
        )
        + 64 * 10
    )
    assert costs.cnn == 2 * macs
    assert costs.outputs == (costs.cnn,)


def test_cumulative_costs_include_every_ic_on_the_way():
    sdn = build_sdn("resnet56", 10, 32)
    costs = output_costs(sdn)
    assert list(costs.outputs) == sorted(costs.outputs)
    head_flops = []
    for h, p in zip(sdn.heads, sdn.positions):
        x = torch.zeros(1, *sdn.cnn.features(torch.zeros(1, 3, 32, 32))[p].shape[1:])
        with FlopCounterMode(display=False) as c:
            h(x)
        head_flops.append(c.get_total_flops())
    assert costs.outputs[-1] == costs.cnn + sum(head_flops)


def test_costs_do_not_change_training_mode():
    sdn = build_sdn("small", 10, 32).train()
    output_costs(sdn)
    assert sdn.training


def test_a_model_is_counted_once_until_its_layers_change(monkeypatch):
    """The second count of the same model object is the first one's, with nothing run; a model whose
    IC head was replaced is counted again and gets the new head's figures."""
    import copy

    from shallowdeep.models import costs as costs_module

    sdn = build_sdn("resnet56", 10, 32)
    first = output_costs(sdn)
    counted: list[str] = []
    real = costs_module._count
    monkeypatch.setattr(costs_module, "_count", lambda m, c: counted.append(c) or real(m, c))
    assert output_costs(sdn) is first and counted == []
    sdn.heads[0] = copy.deepcopy(sdn.heads[0])  # another module object in the same place
    assert output_costs(sdn).outputs == first.outputs and counted == ["torch"]
    x = sdn.cnn.stem(torch.zeros(1, 3, 32, 32))
    for block in sdn.cnn.blocks[: sdn.positions[0] + 1]:
        x = block(x)
    c, h, w = x.shape[1:]
    sdn.heads[0] = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1, bias=False), sdn.heads[0])
    dearer = output_costs(sdn)
    assert counted == ["torch", "torch"]
    assert dearer.outputs[0] - first.outputs[0] == pytest.approx(2 * c * c * 9 * h * w)
    assert output_costs(sdn, "reference") is not dearer and counted[-1] == "reference"
