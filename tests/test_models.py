"""Backbones, the registry, the SDN type: shapes, gradients, exact parameter counts, sharing, cutting."""

from __future__ import annotations

import pytest
import torch

from shallowdeep import SDN, UserError, build_cnn, build_sdn, list_archs, to_sdn
from shallowdeep.models import register

SPEC_PARAMS = {  # spec section 2: (CNN, SDN) parameters of the reference models
    ("vgg16_bn", 10, 32): (15_253_578, 15_468_683),
    ("resnet56", 10, 32): (855_770, 891_676),
    ("wrn32_4", 10, 32): (7_404_074, 7_547_500),
    ("mobilenet", 10, 32): (3_217_226, 3_483_520),
    ("vgg16_bn", 100, 32): (15_299_748, 17_450_753),
    ("resnet56", 100, 32): (861_620, 1_220_626),
    ("wrn32_4", 100, 32): (7_427_204, 8_861_410),
    ("mobilenet", 100, 32): (3_309_476, 5_972_380),
    ("vgg16_bn", 200, 64): (21_222_664, 26_753_470),
    ("resnet56", 200, 64): (868_120, 1_586_126),
    ("wrn32_4", 200, 64): (7_452_904, 10_321_310),
    ("mobilenet", 200, 64): (3_411_976, 11_195_381),
}
PAPER_ICS = {"vgg16_bn": 6, "resnet56": 6, "wrn32_4": 6, "mobilenet": 5}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("key", list(SPEC_PARAMS), ids=lambda k: f"{k[0]}-{k[1]}cls-{k[2]}px")
def test_parameter_counts_match_spec(key):
    arch, classes, size = key
    sdn = build_sdn(arch, classes, size)
    assert (n_params(sdn.cnn), n_params(sdn)) == SPEC_PARAMS[key]


def test_registry_lists_paper_backbones_and_small():
    assert set(list_archs()) >= {"vgg16_bn", "resnet56", "wrn32_4", "mobilenet", "small"}


def test_registry_is_strict():
    with pytest.raises(ValueError, match="registered twice"):
        register("resnet56")(lambda c, s: None)
    with pytest.raises(UserError, match="unknown architecture 'resnet57'.*resnet56"):
        build_cnn("resnet57", 10, 32)


@pytest.mark.parametrize("arch", list_archs())
@pytest.mark.parametrize("size", [32, 64])
def test_forward_shapes_gradients_and_final_equals_cnn(arch, size):
    torch.manual_seed(0)
    sdn = build_sdn(arch, 7, size)
    expected = PAPER_ICS.get(arch, len(sdn.positions))
    assert sdn.num_outputs == expected + 1
    x = torch.randn(3, 3, size, size)
    outs = sdn(x)
    assert len(outs) == sdn.num_outputs
    assert all(o.shape == (3, 7) and torch.isfinite(o).all() for o in outs)
    sum(o.sum() for o in outs).backward()
    no_grad = [n for n, p in sdn.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    sdn.eval()
    with torch.no_grad():
        assert torch.equal(sdn(x)[-1], sdn.cnn(x))


@pytest.mark.parametrize("arch", ["vgg16_bn", "resnet56", "wrn32_4", "mobilenet"])
def test_paper_backbones_refuse_other_sizes(arch):
    with pytest.raises(UserError, match="takes 32 or 64 px"):
        build_cnn(arch, 10, 48)


def test_wrong_input_shape_is_a_clear_error():
    sdn = build_sdn("small", 10, 32)
    with pytest.raises(UserError, match=r"expects images shaped \[N, 3, 32, 32\]"):
        sdn(torch.zeros(1, 3, 28, 28))
    with pytest.raises(UserError, match="expects images"):
        sdn(torch.zeros(1, 1, 32, 32))


def test_ic_positions_follow_the_paper_masks():
    assert build_sdn("vgg16_bn", 10, 32).positions == (1, 3, 5, 6, 8, 9)
    assert build_sdn("resnet56", 10, 32).positions == (3, 7, 11, 15, 19, 23)
    assert build_sdn("wrn32_4", 10, 32).positions == (2, 4, 6, 8, 10, 12)
    assert build_sdn("mobilenet", 10, 32).positions == (2, 4, 6, 8, 11)


def test_ic_head_pools_to_about_4x4_and_vgg_fc_ic_is_linear():
    sdn = build_sdn("vgg16_bn", 10, 32)
    heads = list(sdn.heads)
    assert heads[0].kernel == (4, 4) and heads[0].alpha is not None  # 64 ch at 16 px -> 4x4
    assert heads[-1].alpha is None  # 512 ch at 2 px: no pooling
    assert heads[0].linear.in_features == 64 * 16


def test_resnet_ic_sees_the_sum_before_relu():
    torch.manual_seed(0)
    sdn = build_sdn("resnet56", 10, 32).eval()
    feats = sdn.cnn.features(torch.randn(2, 3, 32, 32))
    assert (feats[sdn.positions[0]] < 0).any(), "the residual sum feeding IC 1 must not be rectified"


def test_conversion_shares_weights_and_yields_the_cnn():
    cnn = build_cnn("resnet56", 10, 32)
    sdn = to_sdn(cnn)
    assert sdn.cnn is cnn
    cnn_ptrs = {p.data_ptr() for p in cnn.parameters()}
    sdn_ptrs = {p.data_ptr() for p in sdn.parameters()}
    assert cnn_ptrs <= sdn_ptrs
    with torch.no_grad():
        cnn.head[-1].weight.add_(1.0)
    assert torch.equal(sdn.cnn.head[-1].weight, cnn.head[-1].weight)


@pytest.mark.parametrize("arch", list_archs())
def test_cut_returns_network_ending_at_ic_k(arch):
    torch.manual_seed(0)
    sdn = build_sdn(arch, 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = sdn(x)
        for k in range(len(sdn.positions)):
            cut = sdn.cut(k)
            outs = cut(x)
            assert len(outs) == k + 1
            assert torch.equal(outs[-1], full[k])
            assert len(cut.blocks) == sdn.positions[k] + 1
    with pytest.raises(UserError):
        sdn.cut(len(sdn.positions))


def test_bad_ic_positions_rejected():
    cnn = build_cnn("small", 10, 32)
    with pytest.raises(UserError, match="IC positions"):
        SDN(cnn, (2, 1))
    with pytest.raises(UserError, match="IC positions"):
        SDN(cnn, (len(cnn.blocks) - 1,))
