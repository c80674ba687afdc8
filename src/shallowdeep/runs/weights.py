"""Models and optimiser state <-> safetensors files and run metadata. Nothing here is unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.errors import ArgumentError, RunFolderError
from ..core.io import JSONObject, load_safetensors, write_bytes
from ..models import CNN
from ..models.convert import build_model, chain_cnn, chain_of
from ..models.sdn import SDN
from .folder import RunFolder
from .meta import ModelMeta


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: JSONObject | None = None) -> bytes:
    """Serialise tensors as safetensors; ``metadata`` (JSON-able) goes into its header."""
    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def read_tensors(path: str | Path, max_bytes: int | None = None) -> tuple[dict[str, torch.Tensor], JSONObject]:
    """Read a safetensors file and its JSON metadata, or raise a one-line :class:`RunFolderError`.
    ``max_bytes`` refuses a file larger than what it should hold before reading it."""
    return load_safetensors(path, st_load, max_bytes)


# --------------------------------------------------------------------------------------------------
# models <-> run metadata


def build_from(meta: ModelMeta, module: torch.nn.Module | None = None) -> CNN | SDN:
    """Rebuild an (untrained) model from ``run.json``'s architecture fields; a run made from a user's
    own module needs that ``module`` again (no run executes code it names)."""
    source = meta.source
    if source is not None and source.get("kind") == "module":
        if module is None:
            raise RunFolderError(
                f"this run was made from a user module ({source.get('class')}): give that module again "
                "(`module`), as an instance of the same class"
            )
        try:
            chain = chain_of(module, meta.image_size, source.get("blocks"))
            cnn = chain_cnn(chain, list(source["cuts"]), meta.arch, {k: v for k, v in source.items() if k != "cuts"})
        except ArgumentError as e:
            raise RunFolderError(f"the module given does not match this run ({e})") from None
        return cnn if meta.kind == "cnn" else SDN(cnn, meta.ic_positions, cascade=meta.cascade)
    try:
        cuts = list(source["cuts"]) if source is not None else None
        cnn, _ = build_model(meta.arch, meta.num_classes, meta.image_size, cuts=cuts)
        if source is not None:
            cnn.source = source
        return cnn if meta.kind == "cnn" else SDN(cnn, meta.ic_positions, cascade=meta.cascade)
    except (KeyError, TypeError, ValueError, ArgumentError) as e:
        raise RunFolderError(
            f"run.json lacks a valid architecture description ({e}): the run folder is damaged"
        ) from None


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s state dict as stored (what a weights file of it holds, header aside)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict strictly, refusing weights of another architecture with a clear message."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise RunFolderError(
            f"{source} does not fit this {getattr(model, 'arch', 'model')} "
            f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} mis-shaped tensors, "
            f"e.g. {first!r}): it belongs to another architecture; give the weights this model was "
            "trained to, or train it again"
        )
    model.load_state_dict(tensors, strict=True)


def load(
    path: str | Path, map_location: str | torch.device = "cpu", module: torch.nn.Module | None = None
) -> CNN | SDN:
    """Rebuild the trained model of a finished run folder (CNN or SDN), in eval mode. A run made from
    a user's own module is rebuilt around ``module`` (the same class; its weights are replaced)."""
    run = RunFolder(path)
    meta = run.meta()
    weights = run.require_weights()
    model = build_from(meta.model, module)
    tensors, _ = read_tensors(weights, max_bytes=state_bytes(model) * 2 + (1 << 20))
    load_weights(model, tensors, weights)
    return model.to(map_location).eval()


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Atomically write ``model``'s state dict as safetensors."""
    write_bytes(path, tensors_to_bytes(model.state_dict()))


# --------------------------------------------------------------------------------------------------
# optimiser state as tensors + JSON


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], JSONObject]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, JSONObject] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                plain.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: JSONObject) -> None:
    """Restore what :func:`optimizer_to_tensors` wrote."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("plain", {}).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # safetensors stores every tensor contiguous, so a channels-last parameter's momentum (or Adam
    # moments) comes back with other strides than the parameter; PyTorch's fused CUDA step refuses
    # that ("check_fast_path_restrictions"), which broke every resumed compiled run on a GPU
    for group in opt.param_groups:
        for p in group["params"]:
            for name, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][name] = torch.empty_like(p, dtype=v.dtype).copy_(v)
