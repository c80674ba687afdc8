"""Staged ONNX export of an early-exit engine: one graph per stage, a manifest, no graph with a branch.

Exporting a whole SDN computes every output, and exporters refuse a data-dependent exit. Split at
the ICs instead: stage k runs the blocks up to IC k and returns both the feature and IC k's logits;
the last stage runs the rest and the final classifier. Each stage is a static graph with a dynamic
batch axis; :mod:`shallowdeep.inference.deploy` (numpy + onnxruntime) runs them with real exits. The stages
are the engine's inference copies (conv+BN folded), so ONNX and PyTorch compute the same thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.drift import ExitProfile
from ..core.errors import ArgumentError
from ..core.io import JSONObject, temp_folder, write_json
from ..models.sdn import SDN
from .engine import EarlyExitEngine

FORMAT = "shallowdeep-export/2"  # 2: the exit entry is an ExitRule
MANIFEST = "manifest.json"
DEFAULT_OPSET = 17


class _Stage(nn.Module):
    """Blocks, then (for an IC stage) the feature and the IC's logits, else the final logits."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module, ic: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.ic = ic

    def forward(self, x: torch.Tensor):
        for b in self.blocks:
            x = b(x)
        return (x, self.head(x)) if self.ic else self.head(x)


def stages(engine: EarlyExitEngine) -> list[nn.Module]:
    """The engine's stages as modules: its folded blocks up to each IC (the stem in the first) with the
    IC's head, then the rest with the final classifier. Temperatures are left to the runtime."""
    sdn = engine.sdn
    return [
        _Stage(list(blocks), sdn.heads[k] if at is not None else sdn.cnn.head, at is not None).eval()
        for k, (blocks, at) in enumerate(engine._stages)
    ]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ExportInfo:
    """What an export needs beside the engine: the input normalisation the model was trained with,
    the class names, and the weights' hash (``None``: not recorded)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None
    weights_sha256: str | None = None
    profile: ExitProfile | None = None  # the validation split's exits: the deployed drift monitor's reference


def export_engine(engine: EarlyExitEngine, out: str | Path, info: ExportInfo, opset: int = DEFAULT_OPSET) -> Path:
    """Write one ONNX file per stage and ``manifest.json`` into the new folder ``out``, atomically (the
    folder appears whole or not at all)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArgumentError(f"`out` {out} exists and is not an empty folder: choose another")
    if not 7 <= opset <= 21:
        raise ArgumentError(f"`opset` must lie in 7..21, got {opset}")
    sdn = engine.sdn.cpu()
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(parent, f".{out.name}.")
    try:
        files = []
        x = torch.zeros(2, 3, sdn.image_size, sdn.image_size)
        for k, stage in enumerate(stages(engine)):
            names = ["h", "logits"] if k < len(sdn.positions) else ["logits"]
            path = tmp / f"stage{k}.onnx"
            x = _export_stage(stage, x, path, names, opset, (sdn.arch, k))
            files.append({"file": path.name, "outputs": names, "sha256": sha256_bytes(path.read_bytes())})
        write_json(tmp / MANIFEST, _manifest(engine, files, info, opset))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_stage(
    stage: nn.Module, x: torch.Tensor, path: Path, names: list[str], opset: int, where: tuple[str, int]
) -> torch.Tensor:
    """One stage's graph at ``path``, with a dynamic batch axis; the next stage's input."""
    try:
        with warnings.catch_warnings(), torch.no_grad(), _exporting():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                stage,
                (x,),
                str(path),
                input_names=["x"],
                output_names=names,
                dynamic_axes={n: {0: "n"} for n in ["x", *names]},
                opset_version=opset,
                dynamo=False,
            )
            out = stage(x)
            outs = list(out) if len(names) == 2 else [out]
            _static_dims(path, [tuple(o.shape[1:]) for o in outs])
            return outs[0] if len(names) == 2 else x
    except OSError as e:  # a full disk, a folder that went away: nothing an opset changes
        raise ArgumentError(
            f"cannot write {path} ({e.strerror or type(e).__name__}): free space there or choose another `out`"
        ) from None
    except Exception as e:  # the exporter's errors name the operator it has no ONNX form for
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        arch, k = where
        raise ArgumentError(
            f"{arch} cannot be exported to ONNX (stage {k}): {first[:200]}; try another `opset`"
        ) from None


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """What the exporter needs around it: nn.MultiheadAttention's inference fast path off (its fused
    kernel has no ONNX form; the plain path computes the same attention: torchvision's ViT), and the
    graph dump it writes to the process's stdout or stderr for an operator it cannot export sent
    nowhere (the error is said in one line below)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        torch.backends.mha.set_fastpath_enabled(fast)


def _static_dims(path: Path, shapes: list[tuple[int, ...]]) -> None:
    """Write the outputs' sizes after the batch into the graph: the exporter names a size it traced
    through a reshape (a Swin stage's ``[n, 28, 28, 192]`` becomes ``[n, Reshape_dim_1, ...]``), and
    the runtime checks each stage's input against the previous stage's output. The sizes are the
    traced ones: the stage was exported at this image size."""
    import onnx

    model = onnx.load(str(path))
    for output, shape in zip(model.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        for d, size in zip(list(dims)[1:], shape):
            d.ClearField("dim_param")
            d.dim_value = int(size)
    onnx.save(model, str(path))


def _manifest(engine: EarlyExitEngine, files: list[JSONObject], info: ExportInfo, opset: int) -> JSONObject:
    sdn = engine.sdn
    return (
        {
            "format": FORMAT,
            "arch": sdn.arch,
            "opset": opset,
            "stages": files,
            "input": {
                "size": sdn.image_size,
                "layout": "NHWC uint8 RGB",
                "mean": list(info.mean),
                "std": list(info.std),
            },
            "classes": list(info.classes or [str(i) for i in range(sdn.num_classes)]),
            "exit": engine.rule.to_json(),  # spelled out: one threshold per IC, one temperature per output
            "relative_costs": [float(c) for c in engine.relative_costs],
            "weights_sha256": info.weights_sha256,
        }
        | ({"cascade": _links(sdn)} if sdn.cascades is not None else {})
        | _drift(info)
    )


def _drift(info: ExportInfo) -> JSONObject:
    return {"drift": info.profile.to_json()} if info.profile is not None else {}


def _links(sdn: SDN) -> list[JSONObject]:
    """ZTW's cascade links as the runtime applies them: raw logits of IC k plus ``W z + b`` from IC
    k - 1's raw logits (outside the graphs: a C x C map, next to nothing beside a stage)."""
    return [
        {"weight": link.weight.detach().double().tolist(), "bias": link.bias.detach().double().tolist()}
        for link in sdn.cascades or []
    ]
