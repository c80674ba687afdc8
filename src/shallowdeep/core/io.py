"""Atomic writes, JSON and safetensors files. Nothing here unpickles anything.

Tensors are passed as numpy arrays (``safetensors.numpy``), so this layer needs no torch; the
layers above convert.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

# the type of every serialised document: one definition, the runtime's (shallowdeep_deploy.names)
from shallowdeep_deploy.names import JSONObject, JSONValue  # noqa: E402,F401

from .errors import RunFolderError


def lies_inside(target: str | Path, root: str | Path) -> bool:
    """Whether ``target`` is ``root`` or lies below it once links are resolved."""
    resolved, base = Path(target).resolve(), Path(root).resolve()
    return resolved == base or base in resolved.parents


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through ``write(f)`` into a temporary sibling, fsync it, then rename over ``path``.

    A reader (or a killed process) sees the old file or the new one, never a torn one.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report is meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise _naming(e, path) from None
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` naming the file being written (a full disk's error names none, or the temporary file)."""
    named = type(e)(e.errno, e.strerror or str(e), str(path)) if e.errno is not None else OSError(f"{path}: {e}")
    named.__notes__ = list(getattr(e, "__notes__", []))
    return named


def temp_folder(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` to fill and then rename into place, with the permissions a plain
    ``mkdir`` gives (``tempfile.mkdtemp`` makes it private, 0700, and the rename keeps that)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


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
    """Read a JSON object, or raise a one-line :class:`RunFolderError`."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise RunFolderError(
            f"{path} is not readable JSON ({e}): the file is damaged; restore it or make it again"
        ) from None
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path} does not hold a JSON object: the file is damaged; restore it or make it again")
    return obj


def arrays_to_bytes(arrays: dict[str, np.ndarray], metadata: JSONObject | None = None) -> bytes:
    """Serialise numpy arrays as safetensors; ``metadata`` (JSON-able) goes into its header."""
    from safetensors.numpy import save

    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)


def read_safetensors(path: str | Path, max_bytes: int | None = None) -> tuple[bytes, JSONObject]:
    """The bytes of a safetensors file and the JSON metadata in its header, checked to parse.

    ``max_bytes`` refuses a file larger than what it should hold, before reading it. Raises a
    one-line :class:`RunFolderError` for a missing, oversized, truncated or foreign file.
    """
    path = Path(path)
    if max_bytes is not None and path.is_file() and path.stat().st_size > max_bytes:
        raise RunFolderError(
            f"{path} is {path.stat().st_size:,} bytes, more than the {max_bytes:,} its model can "
            "hold: it is foreign or damaged; retrain or restore it"
        )
    try:
        data = path.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_len > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(
            f"{path} is not a valid safetensors file ({e}): it is truncated or foreign; retrain or restore it"
        ) from None
    meta_json = (header.get("__metadata__") or {}).get("json")
    try:
        meta = json.loads(meta_json) if meta_json else {}
    except ValueError:
        raise RunFolderError(f"{path} has damaged metadata: retrain or restore it") from None
    return data, meta


def check_safetensors_extent(path: str | Path) -> None:
    """Refuse a safetensors file longer than its header says it is (read from its first bytes), before
    anything reads or hashes the whole of it: a file padded to gigabytes is refused at once."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < header_len <= min(size - 8, 100 << 20):
            return  # not parseable: read_safetensors says what is wrong when the file is read
        try:
            header = json.loads(f.read(header_len))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
            return
    extent = 8 + header_len + max(ends, default=0)
    if size > extent:
        raise RunFolderError(
            f"{path} is {size:,} bytes, more than the {extent:,} its header declares: it is damaged; "
            "retrain or restore it"
        )


def load_safetensors(
    path: str | Path, load: Callable[[bytes], dict], max_bytes: int | None = None
) -> tuple[dict, JSONObject]:
    """A safetensors file through ``load`` (``safetensors.numpy.load`` or ``safetensors.torch.load``,
    so this layer needs no torch) plus its JSON metadata; one-line :class:`RunFolderError` otherwise."""
    from safetensors import SafetensorError

    data, meta = read_safetensors(path, max_bytes)
    try:
        return load(data), meta
    except (SafetensorError, ValueError) as e:
        raise RunFolderError(
            f"{path} is not a valid safetensors file ({str(e).splitlines()[0]}): it is truncated "
            "or foreign; retrain or restore it"
        ) from None


def read_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], JSONObject]:
    """Read a safetensors file as numpy arrays plus its JSON metadata."""
    from safetensors.numpy import load

    return load_safetensors(path, load)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (used to tell whether weights changed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
