"""Run folders: weights as safetensors, everything else as JSON, every write atomic.

A run folder holds ``run.json`` (architecture, data set, recipe, seed, per-epoch metrics, status),
``model.safetensors`` once training has finished, and ``checkpoint.safetensors`` (weights, optimiser
state and the epoch history) while it runs, so that ``--resume`` continues from the last completed
epoch. Nothing here is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError
from .models import CNN, build_cnn
from .sdn import SDN

FORMAT = "shallowdeep-run/1"
RUN_JSON = "run.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through ``write(f)`` into a temporary sibling, fsync it, then rename over ``path``.

    A reader (or a killed process) sees the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder``; return them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data``."""
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | Path) -> dict:
    """Read a JSON object, or raise a one-line :class:`UserError`."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}): the run folder is damaged") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a JSON object: the run folder is damaged")
    return obj


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> bytes:
    """Serialise tensors as safetensors; ``metadata`` (JSON-able) goes into its header."""
    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file and its JSON metadata, or raise a one-line :class:`UserError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                        "it is truncated or foreign; retrain or restore it") from None
    meta_json = (header.get("__metadata__") or {}).get("json")
    return tensors, (json.loads(meta_json) if meta_json else {})


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (used to tell whether weights changed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# models <-> run metadata


def describe(model: CNN | SDN) -> dict[str, Any]:
    """The architecture part of ``run.json``: enough to rebuild ``model`` with no other input."""
    cnn = model.cnn if isinstance(model, SDN) else model
    return {
        "kind": "sdn" if isinstance(model, SDN) else "cnn",
        "arch": cnn.arch,
        "num_classes": cnn.num_classes,
        "image_size": cnn.image_size,
        "ic_positions": list(model.positions) if isinstance(model, SDN) else [],
    }


def build_from(meta: dict[str, Any]) -> CNN | SDN:
    """Rebuild an (untrained) model from ``run.json``'s architecture fields."""
    try:
        cnn = build_cnn(meta["arch"], int(meta["num_classes"]), int(meta["image_size"]))
        if meta["kind"] == "cnn":
            return cnn
        if meta["kind"] != "sdn":
            raise KeyError("kind")
        return SDN(cnn, tuple(meta["ic_positions"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"run.json lacks a valid architecture description ({e}): the run folder is damaged") from None


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict strictly, refusing weights of another architecture with a clear message."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise UserError(f"{source} does not fit this {getattr(model, 'arch', 'model')} "
                        f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} mis-shaped tensors, "
                        f"e.g. {first!r}): it belongs to another architecture")
    model.load_state_dict(tensors, strict=True)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> CNN | SDN:
    """Rebuild the trained model of a finished run folder (CNN or SDN), in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder (no such directory)")
    meta = read_json(path / RUN_JSON)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path / RUN_JSON} is not a shallowdeep run (format {meta.get('format')!r})")
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path} has no {WEIGHTS}: training did not finish; continue it with --resume")
    model = build_from(meta.get("model", {}))
    tensors, _ = read_tensors(path / WEIGHTS)
    load_weights(model, tensors, path / WEIGHTS)
    return model.to(map_location).eval()


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Atomically write ``model``'s state dict as safetensors."""
    write_bytes(path, tensors_to_bytes(model.state_dict()))


# --------------------------------------------------------------------------------------------------
# optimiser state as tensors + JSON


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                plain.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_to_tensors` wrote."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("plain", {}).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
