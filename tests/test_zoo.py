"""Any CNN becomes an SDN (issue 11): zoo and user models through the fx adapter, placement by cost,
real exits, run folders that rebuild them, and streamed image folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_main
from test_engine import assert_engine_equals_records, safe_thresholds
from torch import nn

import shallowdeep
from shallowdeep.analysis import early_exit
from shallowdeep.core.errors import UserError
from shallowdeep.data import Batches, load_dataset
from shallowdeep.inference.collect import collect
from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.models.adapter import PAPER_FRACTIONS, place
from shallowdeep.models.convert import build_model, candidates, chain_of, to_sdn
from shallowdeep.models.costs import output_costs
from shallowdeep.runs import TrainConfig, train_run

timm = pytest.importorskip("timm")
import torchvision  # noqa: E402

ZOO = [
    ("torchvision", "resnet18"),
    ("torchvision", "vgg11_bn"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "efficientnet_b0"),
    ("timm", "resnet18"),
    ("timm", "convnext_atto"),
    ("timm", "efficientnet_b0"),
]


def zoo_module(zoo: str, name: str, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    if zoo == "torchvision":
        return torchvision.models.get_model(name, weights=None, num_classes=classes).eval()
    return timm.create_model(name, pretrained=False, num_classes=classes).eval()


@pytest.mark.parametrize("zoo,name", ZOO)
def test_converted_model_is_bit_exact_and_costs_follow_the_paper(zoo, name):
    m = zoo_module(zoo, name)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = m(x)
    sdn = to_sdn(m, 64).eval()
    with torch.no_grad():
        outs = sdn(x)
    assert torch.equal(outs[-1], want), "the SDN's final output must be the model's, bit for bit"
    assert len(outs) == 7 and all(o.shape == want.shape for o in outs)
    # placement: each IC at the cut point closest to its fraction among those still free
    chain = chain_of(m, 64)
    cands = candidates(chain)
    rel = {c.cut.name: c.relative for c in cands}
    chosen = sdn.cnn.source["cuts"]
    used: set[str] = set()
    prev = -1.0
    for j, (f, name_) in enumerate(zip(PAPER_FRACTIONS, chosen)):
        err = abs(rel[name_] - f)
        free = [c for c in cands[: len(cands) - (5 - j)] if c.relative > prev and c.cut.name not in used]
        assert err <= min(abs(c.relative - f) for c in free) + 1e-12
        used.add(name_)
        prev = rel[name_]
    costs = output_costs(sdn).relative
    assert all(a < b for a, b in zip(costs, costs[1:])), "costs increase with depth"


def test_ic_costs_within_three_points_where_cut_points_allow():
    """Deep models offer dense cut points: every IC lands within 3 points of its target."""
    for zoo, name, size in (
        ("torchvision", "resnet50", 64),
        ("torchvision", "efficientnet_b0", 64),
        ("timm", "efficientnet_b0", 64),
        ("torchvision", "mobilenet_v3_small", 64),
    ):
        m = zoo_module(zoo, name)
        rel = {c.cut.name: c.relative for c in candidates(chain_of(m, size))}
        cuts = to_sdn(m, size).cnn.source["cuts"]
        errs = [abs(rel[c] - f) for c, f in zip(cuts, PAPER_FRACTIONS)]
        assert max(errs) <= 0.03 + 1e-9, (name, [round(e, 3) for e in errs])


def test_place_is_the_closest_free_cut_by_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cum = np.sort(rng.random(rng.integers(1, 30))).tolist()
        picked = place(cum, 1.0)
        assert picked == sorted(set(picked))
        prev = -1
        wanted = PAPER_FRACTIONS[-len(cum) :] if len(cum) < 6 else PAPER_FRACTIONS
        for j, (f, i) in enumerate(zip(wanted, picked)):
            # the closest among the cuts after the previous IC that leave one for each later IC
            best = min(abs(c - f) for c in cum[prev + 1 : len(cum) - (len(wanted) - 1 - j)])
            assert abs(cum[i] - f) == best
            prev = i
        assert len(picked) == min(len(cum), 6)
    with pytest.raises(UserError, match="fractions"):
        place([0.5], 1.0, [0.5, 0.2])


@pytest.mark.parametrize("zoo,name", [("torchvision", "resnet18"), ("timm", "convnext_atto")])
def test_engine_exits_agree_with_records_on_zoo_models(zoo, name):
    sdn = to_sdn(zoo_module(zoo, name), 64).eval()
    x = torch.randn(20, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_engine_equals_records(sdn, x, (1, 8), margin=1e-3)


def test_non_square_features_get_a_pooled_head():
    from shallowdeep.models.heads import ICHead

    h = ICHead((8, 12, 6), 5)
    assert h.kernel == (3, 1) and h(torch.randn(2, 8, 12, 6)).shape == (2, 5)
    assert ICHead((16, 3, 3), 5).alpha is None and ICHead((7, 40), 5)(torch.randn(2, 7, 40)).shape == (2, 5)


# --------------------------------------------------------------------------------------------------
# user modules


class Tiny(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.b2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b1(x)
        x = self.b3(self.b2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Untraceable(Tiny):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 1.0
        return super().forward(x)


def test_user_module_round_trip_and_ic_cuts(tmp_path, digits):
    m = Tiny(10)
    sdn = to_sdn(m, 32)
    x = torch.randn(2, 3, 32, 32)
    m.eval(), sdn.eval()
    with torch.no_grad():
        assert torch.equal(sdn(x)[-1], m(x))
    named = to_sdn(Tiny(10), 32, cuts=["add", "b2_2"])
    assert named.cnn.source["cuts"] == ["add", "b2_2"] and named.num_outputs == 3
    out = train_run(
        TrainConfig(
            out=str(tmp_path / "run"), mode="sdn", data="digits", module=Tiny(10), epochs=1, batch_size=64, device="cpu"
        ),
        progress=False,
        log=None,
    )
    meta = json.loads((out / "run.json").read_text())
    assert meta["model"]["source"]["kind"] == "module" and meta["model"]["arch"] == "module:Tiny"
    with pytest.raises(UserError, match="give that module again"):
        shallowdeep.load(out)
    loaded = shallowdeep.load(out, module=Tiny(10))
    rec = collect(loaded, digits, "test")
    assert rec.num_outputs == loaded.num_outputs
    # analyzed and run early-exit from Python with the module given again (engine_from_run said to
    # pass the module, and had no such argument)
    from shallowdeep.runs import engine_from_run
    from shallowdeep.workflows import analyze_run

    with pytest.raises(UserError, match="give that module again"):
        analyze_run(out)
    assert (analyze_run(out, module=Tiny(10)).html).is_file()
    engine = engine_from_run(out, module=Tiny(10))
    got = engine.classify(digits.test.images[:16])  # uint8, normalised with the run's statistics
    assert len(got.exits) == 16 and (got.exits < engine.num_outputs).all()
    _module_run_on_the_command_line(out, tmp_path, digits)


def _module_run_on_the_command_line(out, tmp_path, digits):
    """info, analyze and predict take such a run with --import-module MODULE:FACTORY, the flag that
    says it runs code; without it, one line naming the flag."""
    import contextlib
    import io
    import os

    from PIL import Image

    from shallowdeep.cli import main

    here = Path(__file__).resolve().parent
    (tmp_path / "mynets_zoo.py").write_text(
        f"import sys\nsys.path.insert(0, {str(here)!r})\nfrom test_zoo import Tiny\n\n"
        "def make():\n    return Tiny(10)\n"
    )
    Image.fromarray(digits.test.images[0].numpy()).save(tmp_path / "one.png")
    flag = ["--import-module", "mynets_zoo:make"]
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the factory's module is imported from the current folder
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["info", str(out)]) == 2
            assert main(["info", str(out), *flag]) == 0
            assert main(["analyze", str(out), "--quiet", *flag]) == 0
            assert main(["predict", str(out), str(tmp_path / "one.png"), *flag]) == 0
            assert main(["predict", str(out), str(tmp_path / "one.png"), "--import-module", "mynets_zoo:nope"]) == 2
    finally:
        os.chdir(cwd)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "give that module again (--import-module)" in lines[0], lines
    assert "--import-module mynets_zoo:nope: AttributeError" in lines[1], lines


def test_untraceable_model_names_the_module_and_the_way_out():
    with pytest.raises(UserError, match=r"cannot be traced.*declare its blocks by module name"):
        to_sdn(Untraceable(), 32)
    # the way out: the blocks by name (the residual block b1 must then be a module of its own)
    seq = nn.Sequential()
    seq.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    seq.add_module("mid", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    seq.add_module("pool", nn.AdaptiveAvgPool2d(1))
    seq.add_module("flat", nn.Flatten())
    seq.add_module("fc", nn.Linear(8, 4))
    sdn = to_sdn(seq, 16, blocks=["stem", "mid", "pool", "flat", "fc"], cuts=["stem", "mid"]).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(sdn(x)[-1], seq.eval()(x))
    with pytest.raises(UserError, match="do not compute"):
        to_sdn(seq, 16, blocks=["mid", "stem", "pool", "flat", "fc"])


@pytest.mark.parametrize(
    "model,kw,msg",
    [
        (Tiny(), {"cuts": ["nope"]}, "not a single-tensor cut point"),
        (Tiny(), {"cuts": ["b1_0"]}, "not a single-tensor cut point"),  # inside the residual block
        (Tiny(), {"cuts": ["b3_1", "add"]}, "distinct cut points in network order"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), {}, "not \\[N, classes\\] logits"),
        (Tiny(), {"image_size": 2}, "image_size"),
        (Tiny(), {"fractions": [0.5, 0.2]}, "fractions"),
    ],
)
def test_bad_models_and_cuts_are_one_line_errors(model, kw, msg):
    kw = {"image_size": 32} | kw
    with pytest.raises(UserError, match=msg) as e:
        to_sdn(model, **kw)
    assert "\n" not in str(e.value)


class FixedReshape(nn.Module):
    """Fails inside the traced code itself (a reshape to a fixed size), not inside a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 30 * 30, 3)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], 4 * 30 * 30))


@pytest.mark.parametrize("model", [nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(3600, 3)), FixedReshape()])
def test_image_size_the_model_cannot_take(model, capfd):
    """One line and nothing else: torch.fx prints its generated code and a traceback for an error
    raised in that code, before the error reaches the tool."""
    with pytest.raises(UserError, match="cannot take 16 px images"):
        to_sdn(model, 16)
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# weights


def test_weights_file_fits_or_names_the_first_mismatch(tmp_path):
    from safetensors.torch import save_file

    src = torchvision.models.resnet18(num_classes=1000)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "r18.safetensors")
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    for f in ("r18.safetensors", "r18.pth"):
        cnn, zm = build_model("torchvision:resnet18", 5, 32, weights=str(tmp_path / f))
        assert any("classifier" in n for n in zm.notes)  # 1000 -> 5 classes: fresh classifier
        conv = dict(cnn.named_parameters())
        w = next(v for k, v in conv.items() if k.endswith("conv1.weight"))
        assert torch.equal(w, src.conv1.weight)
    other = torchvision.models.resnet34(num_classes=5)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "r34.safetensors")
    with pytest.raises(UserError, match=r"do not fit: .* is missing|do not fit: .* not in the model"):
        build_model("torchvision:resnet18", 5, 32, weights=str(tmp_path / "r34.safetensors"))
    bad = torchvision.models.resnet18(num_classes=5)
    sd = bad.state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match=r"layer1.0.conv1.weight is \[64, 64, 1, 1\] in the file, \[64, 64, 3, 3\]"):
        build_model("torchvision:resnet18", 5, 32, weights=str(tmp_path / "bad.safetensors"))


def test_pretrained_offline_is_one_line_naming_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"resnet18-f37072fd.pth in .*checkpoints, or pass the file as weights"):
        build_model("torchvision:resnet18", 10, 32, pretrained=True)
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_timm_pretrained_offline_is_one_line_naming_the_hub_file_and_cache(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import timm.models._hub as hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    asked = []

    def offline(repo_id, filename=None, *a, **k):  # what huggingface_hub raises with no network
        asked.append((repo_id, filename))
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    from shallowdeep.models import zoo

    monkeypatch.setattr(zoo, "_hub_reachable", lambda timeout=3.0: True)  # the host answers; the download fails
    with pytest.raises(UserError) as e:
        build_model("timm:resnet18", 10, 32, pretrained=True)
    msg = str(e.value)
    assert asked and "\n" not in msg and "https://huggingface.co/timm/resnet18" in msg
    assert "model.safetensors" in msg and "HF_HOME" in msg
    assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------------------------------
# image folders, end to end


def write_folder(root: Path, classes=("cat", "dog", "eel"), n=(12, 3, 3), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, k in zip(("train", "val", "test"), n):
        for ci, c in enumerate(classes):
            d = root / part / c
            d.mkdir(parents=True)
            for i in range(k):
                h, w = (30, 44) if i % 3 == 0 else (36, 36)
                a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
                a[..., ci] = 255  # a learnable colour cue
                Image.fromarray(a).save(d / f"{i}.jpg")
    return root


def test_streamed_and_memory_folders_see_the_same_pixels(tmp_path):
    root = write_folder(tmp_path / "f")
    with pytest.warns(UserWarning, match="not square"):
        mem = load_dataset(f"imagefolder:{root}", image_size=24, mode="memory")
    st = load_dataset(f"imagefolder:{root}", image_size=24, mode="stream")
    assert st.meta["data_mode"] == "stream" and mem.meta["val_from"] == "val/" and len(st.val) == 9
    assert torch.equal(st.test.images[torch.arange(len(st.test))], mem.test.images)
    xs = torch.cat([x for x, _ in Batches(st, "test", 4)])
    assert xs.shape == (9, 3, 24, 24)
    # training batches: RandomResizedCrop + flip from workers, repeatable with the same seed
    a = [x for x, _ in Batches(st, "train", 8, train=True, generator=torch.Generator().manual_seed(3))]
    b = [x for x, _ in Batches(st, "train", 8, train=True, generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == 5
    # no size asked: streamed small images keep their own size (the first training image's, 30 px
    # here), as in memory; only larger images come down to 224
    with pytest.warns(UserWarning, match="not square"):
        assert load_dataset(f"imagefolder:{root}", mode="stream").image_size == 30
        assert load_dataset(f"imagefolder:{root}", mode="memory").image_size == 30
    from PIL import Image

    big = tmp_path / "big"
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        (big / part / "a").mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8)).save(big / part / "a" / f"{i}.png")
    assert load_dataset(f"imagefolder:{big}", mode="stream").image_size == 224


def test_splits_whose_classes_differ_are_refused(tmp_path):
    root = write_folder(tmp_path / "f")
    (root / "val" / "yak").mkdir()
    with pytest.raises(UserError, match="val/ has classes that train/ lacks"):
        load_dataset(f"imagefolder:{root}")


def test_zoo_cnn_then_ic_only_on_a_streamed_folder_analyze_predict(tmp_path):
    root = write_folder(tmp_path / "f")
    cnn_run, ic_run = tmp_path / "cnn", tmp_path / "ic"
    common = ["--data", f"imagefolder:{root}", "--device", "cpu", "--quiet", "--epochs", "1", "--batch-size", "16"]
    r = run_cli(
        "train",
        "--mode",
        "cnn",
        "--arch",
        "torchvision:resnet18",
        "--image-size",
        "32",
        "--data-mode",
        "stream",
        "--out",
        str(cnn_run),
        *common,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--mode", "ic-only", "--from", str(cnn_run), "--out", str(ic_run), *common[2:])
    assert r.returncode == 0, r.stderr
    meta = json.loads((ic_run / "run.json").read_text())
    assert meta["config"]["data_mode"] == "stream" and meta["model"]["source"]["kind"] == "zoo"
    # ic-only leaves the backbone bit-exact
    cnn, sdn = shallowdeep.load(cnn_run), shallowdeep.load(ic_run)
    for (k, v), (k2, v2) in zip(cnn.state_dict().items(), sdn.cnn.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    r = run_cli("analyze", str(ic_run), "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (ic_run / "report" / "report.html").is_file()
    r = run_cli("predict", str(ic_run), str(root / "test" / "cat"), "--resize", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and all("exit" in row for row in rows)
    # the engine's exits equal the records' on the test split
    data = shallowdeep.runs.run_data(ic_run)
    rec = collect(sdn, data, "test")
    q = safe_thresholds(rec, 3, margin=1e-6)[0]
    x = torch.cat([x for x, _ in Batches(data, "test", 64)])
    assert EarlyExitEngine(sdn, q).classify(x, normalized=True).exits.tolist() == early_exit(rec, q).exits.tolist()
    # Grad-CAM on a traced zoo model: the explanations run and land where the report finds them
    r = run_cli("explain", str(ic_run), "--device", "cpu", "--split", "train", "--max", "2")
    assert r.returncode == 0, r.stderr
    ex = json.loads((ic_run / "explain" / "explain.json").read_text())
    assert ex["split"] == "train" and 1 <= len(ex["inputs"]) <= 2, ex  # the seeded run has such inputs
    assert (ic_run / "explain" / "explanations.png").is_file()


def test_info_lists_cut_points(tmp_path):
    r = run_main(
        "info", "--arch", "torchvision:resnet18", "--data", "cifar10", "--image-size", "64", "--cuts", "--json"
    )
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    rel = [c["relative"] for c in obj["cuts"]]
    assert rel == sorted(rel) and sum(c["paper_placement"] for c in obj["cuts"]) == 6
    assert all(len(c["shape"]) >= 1 for c in obj["cuts"])
