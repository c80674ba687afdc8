"""Vision transformers and channels-last backbones as SDNs (issue 29): cut points at block ends, the
layout of each feature read from the graph, IC heads that pool the right axes, and the pipeline.

Small sizes keep it fast: timm builds its ViTs for 32 px (a 2x2 patch grid) on request. The 224 px
check of ten models is ``benchmarks/transformer_sdns.py``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_main
from test_engine import assert_engine_equals_records
from torch import nn

from shallowdeep.core.errors import UserError
from shallowdeep.models.convert import build_model, candidates, chain_of, to_sdn
from shallowdeep.models.costs import output_costs
from shallowdeep.models.heads import ICHead, TokenHead, make_head
from shallowdeep.models.layout import CHW, HWC, TOKENS
from shallowdeep.models.sdn import SDN
from shallowdeep.training import Recipe

timm = pytest.importorskip("timm")


def test_each_layout_gets_a_head_that_pools_its_own_axes():
    g = torch.Generator().manual_seed(0)
    # [C, H, W]: the paper's mixed pooling over H and W (4x4 cells of an 8x8 map)
    chw = make_head((6, 8, 8), 5, CHW)
    assert isinstance(chw, ICHead) and chw.kernel == (2, 2)
    x = torch.randn(3, 6, 8, 8, generator=g)
    a = chw.alpha
    pooled = a * nn.functional.max_pool2d(x, 2) + (1 - a) * nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(chw(x), chw.linear(pooled.flatten(1)))
    # [H, W, C]: normalised over C, averaged over H and W (not over C, as a [C, H, W] head would)
    hwc = make_head((8, 8, 6), 5, HWC)
    assert isinstance(hwc, TokenHead) and hwc.pooled == (0, 1)
    x = torch.randn(3, 8, 8, 6, generator=g)
    want = hwc.linear(nn.functional.layer_norm(x, (6,), hwc.norm.weight, hwc.norm.bias).mean((1, 2)))
    assert torch.allclose(hwc(x), want)
    # [T, D] with two prefix tokens: the mean leaves them out, the class token is token 0 alone
    mean = make_head((6, 4), 5, TOKENS, prefix=2)
    cls = make_head((6, 4), 5, TOKENS, prefix=2, token_pool="cls")
    x = torch.randn(3, 6, 4, generator=g)
    y = x.clone()
    y[:, :2] = torch.randn(3, 2, 4, generator=g)  # change only the prefix tokens
    assert torch.allclose(mean(x), mean(y)) and not torch.allclose(cls(x), cls(y))
    z = x.clone()
    z[:, 1:] = torch.randn(3, 5, 4, generator=g)  # change everything but the class token
    assert torch.allclose(cls(x), cls(z))
    with pytest.raises(UserError, match="no class token"):
        make_head((4, 4), 5, TOKENS, prefix=0, token_pool="cls")


class ChannelsLast(nn.Module):
    """A 4x4x4 channels-last backbone: the shape alone cannot tell its maps from [C, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, 4)
        self.blocks = nn.Sequential(*[Block(4) for _ in range(8)])
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        x = self.blocks(x)
        return self.fc(x.mean((1, 2)))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def test_channels_last_maps_are_recognised_from_the_graph():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    chain = chain_of(model, 16)
    layouts = {c.name: c.layout for c in chain.ic_cuts}
    assert layouts.pop("stem") == CHW  # the convolution's own output is channels first
    assert len(layouts) == 7 and set(layouts.values()) == {HWC}, layouts  # every block's output
    sdn = to_sdn(model, 16, cuts=["add", "add_2", "add_4"]).eval()
    assert all(isinstance(h, TokenHead) and h.layout == HWC for h in sdn.heads)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(sdn(x)[-1], model(x))


def vit(name: str = "vit_tiny_patch16_224", size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, img_size=size).eval()


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_vit_blocks_are_cut_points_with_token_heads(name, prefix):
    model = vit(name)
    cands = candidates(chain_of(model, 32))
    blocks = [c for c in cands if ".blocks." in f".{c.cut.where}" or "in blocks." in c.cut.where]
    assert len(blocks) == 11, [c.cut.where for c in cands]  # 12 blocks, the last feeds the head
    assert all(c.cut.layout == TOKENS and c.cut.prefix == prefix for c in blocks)
    sdn = to_sdn(model, 32).eval()
    assert len(sdn.heads) == 6 and all(isinstance(h, TokenHead) and h.prefix == prefix for h in sdn.heads)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = sdn(x)
        assert torch.equal(outs[-1], model(x)), "the SDN's final output must be the model's, bit for bit"
    costs = output_costs(sdn).relative
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert max(abs(c - f) for c, f in zip(costs, (0.15, 0.30, 0.45, 0.60, 0.75, 0.90))) < 0.05


def test_engine_exits_equal_the_records_on_a_vit_and_a_swin():
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, img_size=64)
    for model, size in ((vit(), 32), (swin, 64)):
        torch.manual_seed(0)
        sdn = to_sdn(model.eval(), size).eval()
        for h in sdn.heads:  # spread the random ICs' confidences
            nn.init.normal_(h.linear.weight, 0.0, 3.0 / h.linear.in_features**0.5)
        x = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(2))
        assert_engine_equals_records(sdn, x, (1, 5), margin=1e-4)


def test_a_model_without_any_block_end_says_how_to_declare_blocks():
    class TwoBranches(nn.Module):  # both branches stay alive to the classifier: no single-tensor cut
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 5), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x).mean((2, 3)), self.b(x).mean((2, 3))], 1))

    with pytest.raises(UserError, match=r"blocks=\[\.\.\.\]") as e:
        to_sdn(TwoBranches(), 16)
    assert "\n" not in str(e.value)


def test_zoo_transformers_take_other_image_sizes_and_resized_weights(tmp_path):
    from safetensors.torch import save_file

    cnn, zm = build_model("timm:vit_tiny_patch16_224", 10, 48)
    assert zm.input_size == 48 and SDN(cnn).heads[0].feature_shape == (10, 192)  # 3x3 patches + class token
    full = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "w.safetensors")
    cnn, _ = build_model("timm:vit_tiny_patch16_224", 10, 32, weights=str(tmp_path / "w.safetensors"))
    # the 14x14 position embedding interpolated to 2x2, as timm's own loader does
    assert cnn.image_size == 32
    tv, _ = build_model("torchvision:vit_b_16", 10, 32)
    assert SDN(tv).heads[0].feature_shape == (5, 768)


def test_vit_recipe_pieces():
    r = Recipe(epochs=10, optimizer="adamw", lr=1e-3, schedule="cosine", warmup_epochs=2, clip_grad_norm=1.0).check()
    lrs = [r.lr_at(e) for e in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] < 1e-4
    with pytest.raises(UserError, match="milestones"):
        Recipe(epochs=10, schedule="cosine", milestones=(5,)).check()
    with pytest.raises(UserError, match="schedule"):
        Recipe(epochs=10, schedule="step").check()


def test_clipping_bounds_the_gradient_norm_of_each_step(monkeypatch):
    from shallowdeep.training import loop

    norms: list[float] = []
    real = nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        real(params, max_norm)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))

    monkeypatch.setattr(loop.nn.utils, "clip_grad_norm_", spy)
    from shallowdeep.training import Runtime, make_mode
    from shallowdeep.training.modes import Objective

    torch.manual_seed(0)
    sdn = to_sdn(vit(), 32)
    mode = make_mode("sdn")
    runtime = Runtime(torch.device("cpu"))
    opt = torch.optim.SGD(sdn.parameters(), lr=0.1)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    stepped = runtime.prepare(Objective(sdn, mode))
    loop.train_one_epoch(sdn, stepped, mode, batches, opt, runtime, 0, 2, progress=False, clip_grad_norm=0.01)
    assert len(norms) == 2 and max(norms) <= 0.01 * (1 + 1e-4)


def test_vit_sdn_through_train_analyze_export_predict_explain(tmp_path):
    """The README's transformer example at 32 px on digits: every command works and the torch-free
    runtime agrees with the engine."""
    pytest.importorskip("onnxruntime")
    run = tmp_path / "vit"
    train = [
        "train", "--mode", "sdn", "--arch", "timm:vit_tiny_patch16_224", "--data", "digits", "--image-size", "32",
        "--epochs", "1", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--schedule", "cosine",
        "--clip-grad-norm", "1", "--label-smoothing", "0.1", "--token-pool", "cls", "--out", str(run), "--quiet",
    ]  # fmt: skip
    for args in (train, ["analyze", str(run)], ["export", str(run), "--out", str(tmp_path / "exp")]):
        p = run_main(*args)
        assert p.returncode == 0, p.stderr
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"]["source"]["token_pool"] == "cls" and meta["recipe"]["schedule"] == "cosine"
    from shallowdeep import deploy, load
    from shallowdeep.runs import engine_from_run, run_data

    assert all(h.pool == "cls" for h in load(run).heads)  # rebuilt from run.json as trained
    images = run_data(run).test.images[:64]
    got = deploy.load(tmp_path / "exp").classify(images.numpy())
    want = engine_from_run(run).classify(images)
    assert (got.exits == want.exits.numpy()).mean() >= 0.98 and (got.predictions == want.predictions.numpy()).all()
    from PIL import Image

    Image.fromarray(images[0].numpy()).save(tmp_path / "one.png")
    p = run_main("predict", str(run), str(tmp_path / "one.png"))
    assert p.returncode == 0 and "one.png" in p.stdout, p.stderr
    pytest.importorskip("pytorch_grad_cam")
    p = run_main("explain", str(run))
    assert p.returncode == 0, p.stderr
    assert "guided Grad-CAM" in (run / "report" / "report.html").read_text()


@pytest.mark.parametrize(
    "shape,layout,prefix,pool", [((6, 8), TOKENS, 1, "mean"), ((6, 8), TOKENS, 1, "cls"), ((3, 3, 8), HWC, 0, "mean")]
)
def test_the_engines_folded_token_head_computes_the_heads_logits(shape, layout, prefix, pool):
    from shallowdeep.inference.engine import _inference_head

    head = make_head(shape, 5, layout, prefix, pool).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained norm: scale and shift away from 1 and 0
        head.norm.weight.copy_(1 + 0.3 * torch.randn(8, generator=g))
        head.norm.bias.copy_(0.3 * torch.randn(8, generator=g))
        x = torch.randn(4, *shape, generator=g)
        torch.testing.assert_close(_inference_head(head, 0.5)(x), head(x) * 0.5, rtol=1e-5, atol=1e-6)
