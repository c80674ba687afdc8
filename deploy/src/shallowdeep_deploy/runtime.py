"""Early exits outside PyTorch: run an export (``shallowdeep export``) with onnxruntime and numpy only.

    import shallowdeep_deploy as deploy             # or: from shallowdeep.inference import deploy
    model = deploy.load("exported/")                # checks every graph against the manifest's hashes
    result = model.classify(images)                 # uint8 RGB [N, H, W, 3] (or image paths)
    result.predictions, result.exits, result.confidence, result.classes

``model.monitor()`` says when a window of inputs exits differently from the validation split
(:mod:`shallowdeep_deploy.drift`).

This distribution (``pip install shallowdeep-deploy``: numpy, onnxruntime, onnx, Pillow) imports no
torch (tested in an environment without it). Inputs run stage by stage; after each IC the inputs that
exit leave the batch (compaction), the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .drift import ALPHA, WINDOW, DriftMonitor, ExitProfile
from .errors import ArgumentError, DataError, MissingExtraError, NotCalibratedError, RunFolderError, UserError
from .exit_rule import ExitRule, exit_scores, log_softmax, softmax
from .images import fit_image, open_rgb
from .latency import LatencyProfile, processor_name, stage_latency

FORMAT = "shallowdeep-export/2"
FORMAT_1 = "shallowdeep-export/1"  # the exit entry before ExitRule; still loads


class ExportError(RunFolderError):
    """A folder that is not a usable export."""


@dataclass
class Classified:
    """Per input: ``predictions`` (class index), ``exits`` (output index; the last = no IC exit),
    ``confidence`` (max softmax of the output that answered); ``classes`` names the predictions."""

    predictions: np.ndarray
    exits: np.ndarray
    confidence: np.ndarray
    classes: list[str]
    seconds: float | None = None  # the stages' and decisions' wall time (decoding and preprocessing not included)

    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.predictions]


@dataclass(frozen=True)
class StageFile:
    """One stage's graph: its file (a name inside the export), output names and SHA-256."""

    file: str
    outputs: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, checked: stages in order, the input's size and normalisation, class names,
    the exit rule (thresholds per IC, temperatures per output) and each output's relative cost."""

    stages: tuple[StageFile, ...]
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    rule: ExitRule
    relative_costs: tuple[float, ...]
    # ZTW's cascade links: per IC after the first, (weight [C, C], bias [C]) from the previous IC's logits
    links: tuple[tuple[tuple[tuple[float, ...], ...], tuple[float, ...]], ...] | None = None
    profile: ExitProfile | None = None  # the validation split's exits: the drift monitor's reference
    arch: str = "model"  # the exported network's name (a latency profile names it)

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        """The manifest from its JSON; anything else is a :class:`ValueError` naming the key."""
        m = _object(raw, "the manifest")
        if m.get("format") not in (FORMAT, FORMAT_1):
            raise ValueError(f"format {m.get('format')!r}, not {FORMAT}")
        stages = tuple(_stage_file(st, k) for k, st in enumerate(_list(m.get("stages"), "stages", 2, MAX_STAGES)))
        inp = _object(m.get("input"), "input")
        size = inp.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 1024:
            raise ValueError(f"input.size must be an integer in 8..1024, got {size!r}")
        mean, std = _floats(inp.get("mean"), "input.mean", 3, 3), _floats(inp.get("std"), "input.std", 3, 3)
        if any(v <= 0 for v in std):
            raise ValueError(f"input.std must be positive, got {list(std)}")
        classes = _list(m.get("classes"), "classes", 2, MAX_CLASSES)
        if not all(isinstance(c, str) and len(c) <= 1000 for c in classes):
            raise ValueError("classes must be names (strings)")
        n = len(stages)
        try:
            rule = _exit_rule(m)
            rule.per_ic(n - 1), rule.scales(n)  # one threshold per IC, one temperature per output
            ensemble = rule.fitted_ensemble(n)
            if ensemble is not None and ensemble.num_classes != len(classes):
                raise ArgumentError(f"an ensemble of {ensemble.num_classes} classes for {len(classes)}")
        except UserError as e:
            raise ValueError(f"exit: {e}") from None
        costs = _floats(m.get("relative_costs"), "relative_costs", n, n)
        if any(c < 0 for c in costs):
            raise ValueError(f"relative_costs must be numbers >= 0, got {list(costs)}")
        links = _links(m.get("cascade"), n - 2, len(classes))
        profile = _profile(m.get("drift"), n)
        arch = m.get("arch") if isinstance(m.get("arch"), str) and 0 < len(m["arch"]) <= 200 else "model"
        return cls(stages, size, mean, std, tuple(classes), rule, costs, links, profile, arch)  # type: ignore[arg-type]


def _profile(v: Any, outputs: int) -> ExitProfile | None:
    """The manifest's exit profile (absent in exports made before it: no drift monitor)."""
    if v is None:
        return None
    try:
        profile = ExitProfile.from_json(v)
    except UserError as e:
        raise ValueError(f"drift: {e}") from None
    if len(profile.exit_counts) != outputs:
        raise ValueError(f"drift: an exit profile of {len(profile.exit_counts)} outputs for {outputs} stages")
    return profile


def _links(v: Any, count: int, c: int) -> Any:
    """The manifest's cascade links (absent: none): ``count`` objects of a ``[c, c]`` weight and a bias."""
    if v is None:
        return None
    out = []
    for k, link in enumerate(_list(v, "cascade", count, count)):
        link = _object(link, f"cascade[{k}]")
        rows = _list(link.get("weight"), f"cascade[{k}].weight", c, c)
        weight = tuple(_floats(r, f"cascade[{k}].weight row", c, c) for r in rows)
        out.append((weight, _floats(link.get("bias"), f"cascade[{k}].bias", c, c)))
    return tuple(out)


MAX_STAGES, MAX_CLASSES = 1024, 1_000_000


def _object(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(v).__name__}")
    return v


def _list(v: Any, what: str, least: int, most: int) -> list[Any]:
    if not isinstance(v, list) or not least <= len(v) <= most:
        got = f"{len(v)} entries" if isinstance(v, list) else type(v).__name__
        raise ValueError(f"{what} must be a list of {least}..{most} entries, got {got}")
    return v


def _floats(v: Any, what: str, least: int, most: int) -> tuple[float, ...]:
    values = _list(v, what, least, most)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        raise ValueError(f"{what} must hold finite numbers, got {values!r}")
    return tuple(float(x) for x in values)


def _stage_file(st: Any, k: int) -> StageFile:
    st = _object(st, f"stages[{k}]")
    file, digest, outputs = st.get("file"), st.get("sha256"), st.get("outputs", ["h", "logits"])
    if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
        raise ValueError(f"stages[{k}].file must be a file name inside the export, got {file!r}")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"stages[{k}].sha256 must be a SHA-256 in hex, got {digest!r}")
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"stages[{k}].outputs must be a list of names, got {outputs!r}")
    return StageFile(file, tuple(outputs), digest)


@dataclass
class _State:
    """What the exit decision keeps per active input between stages: the inputs still running (the
    caller's ids), the most confident answer so far (the fallback) and the output that gave it, the
    patience run, the outputs so far (an ensemble) and the previous IC's raw logits (a cascade link)."""

    active: np.ndarray
    best_conf: np.ndarray
    best_pred: np.ndarray
    best_out: np.ndarray
    prev: np.ndarray
    run: np.ndarray
    logps: np.ndarray
    prev_raw: np.ndarray

    @classmethod
    def start(cls, ids: np.ndarray, classes: int) -> _State:
        n = len(ids)
        return cls(
            ids,
            np.full(n, -1.0),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.full(n, -1, np.int64),
            np.zeros(n),
            np.zeros((n, 0, classes)),
            np.zeros((n, classes)),
        )

    def part(self, index: np.ndarray | slice) -> _State:
        """The inputs of ``index`` (a mask or a slice)."""
        return _State(*(getattr(self, f)[index] for f in _STATE_FIELDS))

    @staticmethod
    def concat(parts: Sequence[_State]) -> _State:
        return _State(*(np.concatenate([getattr(p, f) for p in parts]) for f in _STATE_FIELDS))


_STATE_FIELDS = ("active", "best_conf", "best_pred", "best_out", "prev", "run", "logps", "prev_raw")


@dataclass
class Pending:
    """Inputs of an export before one stage: their features ``h`` and exit state (with the caller's
    ids). :meth:`Deployment.start` makes them, :meth:`Deployment.step` runs a stage on them."""

    h: np.ndarray
    state: _State

    def __len__(self) -> int:
        return len(self.state.active)

    @property
    def ids(self) -> np.ndarray:
        return self.state.active

    def rows(self, start: int, stop: int | None = None) -> Pending:
        """Inputs ``start:stop`` (views)."""
        part = slice(start, stop)
        return Pending(self.h[part], self.state.part(part))

    @staticmethod
    def concat(parts: Sequence[Pending]) -> Pending:
        """One batch of several (in their order)."""
        if len(parts) == 1:
            return parts[0]
        return Pending(np.concatenate([p.h for p in parts]), _State.concat([p.state for p in parts]))


@dataclass(frozen=True)
class Exits:
    """The inputs that left at one stage: their ids, predictions, confidences, and the output whose
    prediction each got (``output`` itself, or an earlier IC by the most-confident fallback)."""

    output: int
    ids: np.ndarray
    predictions: np.ndarray
    confidence: np.ndarray
    answered: np.ndarray


def _versions() -> dict[str, str]:
    import onnxruntime as ort

    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__}


class Deployment:
    """An export loaded into onnxruntime sessions (see the module docstring)."""

    def __init__(self, folder: Path, manifest: Manifest, sessions: list[Any]) -> None:
        self.folder, self.manifest, self.sessions = folder, manifest, sessions
        self.size = manifest.size
        self.mean = np.asarray(manifest.mean, np.float32).reshape(1, 1, 1, 3)
        self.std = np.asarray(manifest.std, np.float32).reshape(1, 1, 1, 3)
        self.classes = list(manifest.classes)
        self.rule = manifest.rule
        self.thresholds = self.rule.per_ic(len(sessions) - 1)
        self.temperatures = self.rule.scales(len(sessions))
        self.ensemble = self.rule.fitted_ensemble(len(sessions))
        self.links = [None] + [(np.asarray(w, np.float64).T, np.asarray(b)) for w, b in manifest.links or []]
        self.relative_costs = np.asarray(manifest.relative_costs, np.float64)

    @property
    def num_outputs(self) -> int:
        return len(self.sessions)

    def monitor(self, window: int = WINDOW, alpha: float = ALPHA) -> DriftMonitor:
        """A drift monitor against the validation split's exits stored in the manifest: feed it each
        result's ``exits`` and ``confidence`` (:meth:`DriftMonitor.observe`); see
        :mod:`shallowdeep_deploy.drift` for the test."""
        if self.manifest.profile is None:
            raise NotCalibratedError(
                f"{self.folder} holds no validation exit profile (exported before drift monitors): "
                "analyze the run and export it again"
            )
        return DriftMonitor(self.manifest.profile, window, alpha)

    def preprocess(self, images: np.ndarray | Sequence[str | Path]) -> np.ndarray:
        """uint8 RGB ``[N, H, W, 3]`` (or image paths) -> normalised float32 ``[N, 3, S, S]``."""
        if not isinstance(images, np.ndarray):
            images = (
                np.stack([_read(p, self.size) for p in images])
                if len(images)
                else np.zeros((0, self.size, self.size, 3), np.uint8)
            )
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise DataError(
                f"images must be uint8 RGB shaped [N, {self.size}, {self.size}, 3], got "
                f"{images.dtype} {list(images.shape)}: resize them to {self.size}x{self.size}"
            )
        x = (images.astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def classify(self, images: np.ndarray | Sequence[str | Path]) -> Classified:
        """Classify a batch with real exits: each input stops at the first IC its rule lets out."""
        rows: Pending | None = self.start(images)
        n = len(rows)
        preds, exits, confs = np.zeros(n, np.int64), np.full(n, self.num_outputs - 1, np.int64), np.zeros(n)
        started, k = time.perf_counter(), 0
        while rows is not None:
            out, rows = self.step(k, rows)
            preds[out.ids], exits[out.ids], confs[out.ids] = out.predictions, k, out.confidence
            k += 1
        return Classified(preds, exits, confs, self.classes, time.perf_counter() - started)

    def start(self, images: np.ndarray | Sequence[str | Path], ids: np.ndarray | None = None) -> Pending:
        """Images (as :meth:`preprocess` takes them) before the first stage; ``ids`` name them in the
        :class:`Exits` that :meth:`step` gives (default ``0..N-1``)."""
        x = self.preprocess(images)
        ids = np.arange(len(x)) if ids is None else np.asarray(ids, np.int64)
        if ids.shape != (len(x),):
            raise ArgumentError(f"`ids` must name each of the {len(x)} images once, got shape {list(ids.shape)}")
        return Pending(x, _State.start(ids, len(self.classes)))

    def step(self, k: int, rows: Pending) -> tuple[Exits, Pending | None]:
        """Stage ``k`` on ``rows`` (inputs before it): the inputs that leave there, and the rest before
        stage ``k + 1`` (``None`` when none are left). A server re-batches between the steps."""
        if not 0 <= k < self.num_outputs or not len(rows):
            raise ArgumentError(f"`k` must name a stage, 0..{self.num_outputs - 1}, for a non-empty batch")
        got = self._run(k, self.sessions[k], rows.h)
        leave, pred, conf, answered = self._decide(k, rows.state, got[-1])
        out = Exits(k, rows.ids[leave], pred[leave], conf[leave], answered[leave])
        if leave.all():
            return out, None
        return out, Pending(np.ascontiguousarray(got[0][~leave]), rows.state.part(~leave))

    def _decide(self, k: int, state: _State, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The numpy runtime's exit decision at stage ``k`` from its raw logits, for every path:
        (whether each active input leaves, prediction, confidence, the output that answered);
        ``state`` updated. At the last stage every input leaves, the fallback applied."""
        if k < len(self.links) and self.links[k] is not None:  # the cascade link from the previous IC
            raw = raw + state.prev_raw @ self.links[k][0] + self.links[k][1]
        state.prev_raw = raw
        z = raw / self.temperatures[k]
        if self.ensemble is not None:
            state.logps = np.concatenate([state.logps, log_softmax(z)[:, None]], 1)
            z = self.ensemble.logits(state.logps, k)
        p = softmax(z)
        conf, pred = p.max(1), p.argmax(1)
        last = self.num_outputs - 1
        if k == last:
            answered = np.full(len(pred), k)
            if self.rule.fallback == "most_confident":
                use = state.best_conf >= conf
                pred, conf = np.where(use, state.best_pred, pred), np.where(use, state.best_conf, conf)
                answered = np.where(use, state.best_out, answered)
            return np.ones(len(pred), bool), pred, conf, answered
        score, state.run = exit_scores(self.rule, p, pred, last, state.prev, state.run)
        state.prev = pred
        better = conf > state.best_conf
        state.best_conf = np.where(better, conf, state.best_conf)
        state.best_pred = np.where(better, pred, state.best_pred)
        state.best_out = np.where(better, k, state.best_out)
        return score >= self.thresholds[k], pred, conf, np.full(len(pred), k)

    def outputs(self, images: np.ndarray | Sequence[str | Path], batch: int = 256) -> np.ndarray:
        """Every output's logits for every input, no exit taken: ``[N, outputs, classes]``, as the
        SDN computes them (cascade links applied, temperatures not): an exit record of this export."""
        x = self.preprocess(images)
        parts = []
        for i in range(0, len(x), batch):
            h, prev, outs = x[i : i + batch], None, []
            for k, sess in enumerate(self.sessions):
                got = self._run(k, sess, h)
                raw = got[-1]
                if prev is not None and k < len(self.links) and self.links[k] is not None:
                    raw = raw + prev @ self.links[k][0] + self.links[k][1]
                outs.append(raw)
                h, prev = got[0], raw
            parts.append(np.stack(outs, 1))
        return np.concatenate(parts) if parts else np.zeros((0, self.num_outputs, len(self.classes)), np.float32)

    def profile(self, images: np.ndarray | Sequence[str | Path], batch: int = 1, repeats: int = 50) -> LatencyProfile:
        """Every stage's time per input on this machine (its graph and the exit decision), measured
        ``repeats`` times at ``batch`` after one warm-up (the stages see full batches: none leaves),
        and the plain network's (every stage's graph without decisions; the ICs' heads included, an
        export has no graph without them); see :mod:`shallowdeep_deploy.latency`."""
        x = self.preprocess(images)
        if not 1 <= batch <= len(x) or not 1 <= repeats <= 100_000:
            raise ArgumentError(f"profiling needs 1 <= `batch` <= {len(x)} images and 1..100000 `repeats`")
        times: list[list[float]] = [[] for _ in self.sessions]
        plain: list[float] = []
        for r in range(repeats + 1):
            start = (r * batch) % (len(x) - batch + 1)
            h, state, total = x[start : start + batch], _State.start(np.arange(batch), len(self.classes)), 0.0
            for k, sess in enumerate(self.sessions):
                t0 = time.perf_counter()
                outs = self._run(k, sess, h)
                t1 = time.perf_counter()
                self._decide(k, state, outs[-1])
                t2 = time.perf_counter()
                h, total = outs[0], total + (t1 - t0)
                if r:  # the first pass warms up
                    times[k].append((t2 - t0) / batch)
            if r:
                plain.append(total / batch)
        return LatencyProfile(
            self.manifest.arch,
            self._device(),
            "onnx",
            _versions(),
            batch,
            repeats,
            tuple(stage_latency(t) for t in times),
            stage_latency(plain),
        )

    def _device(self) -> str:
        """Where the stages run: the processor, or the first execution provider that is not the CPU's."""
        provider = (self.sessions[0].get_providers() or ["CPUExecutionProvider"])[0]
        return processor_name() if provider == "CPUExecutionProvider" else f"onnxruntime {provider}"

    def _run(self, k: int, sess: Any, h: np.ndarray) -> list[np.ndarray]:
        """Stage ``k`` on ``h``; an onnxruntime failure becomes the export's error."""
        try:
            return sess.run(None, {"x": h})
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidArgument, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ExportError(
                f"stage {k} of {self.folder} failed on its input ({first}): export the run again"
            ) from None


def _exit_rule(manifest: dict[str, Any]) -> ExitRule:
    """The manifest's exit rule; an export of format 1 spelled it ``rule``/``patience``."""
    ex = manifest.get("exit")
    if manifest.get("format") == FORMAT_1 and isinstance(ex, dict):
        ex = {
            "name": ex.get("rule"),
            "k": ex.get("patience", 0),
            "thresholds": ex.get("thresholds"),
            "temperatures": ex.get("temperatures"),
            "fallback": ex.get("fallback", "most_confident"),
        }
    return ExitRule.from_json(ex)


def _read(path: str | Path, size: int) -> np.ndarray:
    return np.asarray(fit_image(open_rgb(path), size), np.uint8)


def load(folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Deployment:
    """Load an export; every graph's hash must match the manifest. ``providers``: onnxruntime's
    execution providers (default: CPU); ``threads``: intra-op threads per session (default:
    onnxruntime's, one per core; 1 is often faster at batch 1, where the stages' pools compete)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("deployment needs onnxruntime, a dependency of shallowdeep-deploy", "deploy") from None
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024):
        raise ArgumentError(f"`threads` must be an integer in 1..1024, got {threads!r}")
    if providers is not None and (isinstance(providers, str) or not all(isinstance(p, str) for p in providers)):
        raise ArgumentError(f"`providers` must be a list of onnxruntime provider names, got {providers!r}")
    available = ort.get_available_providers()
    missing = [p for p in providers or () if p not in available]
    if missing:
        raise ArgumentError(
            f"`providers` {', '.join(missing)} not in this onnxruntime (it has {', '.join(available)}): "
            "install onnxruntime-gpu for CUDAExecutionProvider, or leave `providers` out (CPU)"
        )
    folder = Path(folder)
    manifest = _read_manifest(folder)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    sessions = [_session(ort, folder, st, opts, providers) for st in manifest.stages]
    _check_chain(folder, manifest, sessions)
    return Deployment(folder, manifest, sessions)


MAX_MANIFEST = 16 << 20  # a manifest is a few kB; one class name per class of a large data set stays far below


def _read_manifest(folder: Path) -> Manifest:
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise ExportError(
            f"{folder} is not an export (no manifest.json): export a calibrated run first (shallowdeep export)"
        )
    try:
        if mpath.stat().st_size > MAX_MANIFEST:
            raise ValueError(f"{mpath.stat().st_size} bytes, far more than a manifest")
        return Manifest.from_json(json.loads(mpath.read_bytes()))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ExportError(f"{mpath} is damaged ({str(e)[:300]}): export the run again") from None


def _session(ort: Any, folder: Path, st: StageFile, opts: Any, providers: Sequence[str] | None) -> Any:
    """One stage's session, from a graph that matches its hash and keeps all its data inside itself."""
    path = folder / st.file
    if not path.is_file() or path.is_symlink():
        raise ExportError(f"{folder} lacks {st.file} named by its manifest (or it is a link): export the run again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != st.sha256:
        raise ExportError(
            f"{path} does not match the manifest's hash (changed or from another export): export the run again"
        )
    _refuse_external_data(path, data)
    try:
        return ort.InferenceSession(data, opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime's own error types: not a graph, an operator it lacks, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExportError(f"{path} is not a graph onnxruntime can run ({first}): export the run again") from None


def _refuse_external_data(path: Path, data: bytes) -> None:
    """Refuse a graph whose tensors live in other files: loaded from bytes, their paths would be
    read relative to the process's working directory, outside the export (an export never has any)."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        raise MissingExtraError(
            "deployment needs onnx (to check graphs), a dependency of shallowdeep-deploy", "deploy"
        ) from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not an ONNX graph ({type(e).__name__}): export the run again") from None
    if any(uses_external_data(t) or t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model)):
        raise ExportError(
            f"{path} keeps tensors in external files, which an export never does (a replaced graph?): "
            "export the run again"
        )


def _tensors(model: Any) -> Iterator[Any]:
    """Every tensor of a model: initializers and the tensors of node attributes, subgraphs and
    functions included."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sp in g.sparse_initializer:
                yield sp.values
                yield sp.indices
            nodes.extend(g.node)
            continue
        for a in nodes.pop().attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sp in [a.sparse_tensor] * a.HasField("sparse_tensor") + list(a.sparse_tensors):
                yield sp.values
                yield sp.indices
            graphs.extend([a.g] * a.HasField("g") + list(a.graphs))


def _check_chain(folder: Path, manifest: Manifest, sessions: list[Any]) -> None:
    """Each stage takes ``x`` shaped as the previous stage's ``h`` (the first: the images) and gives
    the outputs its manifest names: a stage swapped for another or reordered is refused here."""
    want = ["n", 3, manifest.size, manifest.size]
    last = len(sessions) - 1
    for k, (st, sess) in enumerate(zip(manifest.stages, sessions)):
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        names = [o.name for o in outputs]
        expected = ["logits"] if k == last else ["h", "logits"]
        shape = list(inputs[0].shape) if len(inputs) == 1 and inputs[0].name == "x" else None
        if shape is None or names != expected or list(st.outputs) != expected or shape[1:] != want[1:]:
            raise ExportError(
                f"{folder / st.file} does not fit stage {k} of the manifest (input {shape}, outputs {names}; "
                f"expected input {want}, outputs {expected}): export the run again"
            )
        logits = list(outputs[-1].shape)
        if len(logits) != 2 or logits[1] != len(manifest.classes):
            raise ExportError(
                f"{folder / st.file} gives logits shaped {logits}, not [n, {len(manifest.classes)}] for the "
                "manifest's classes: export the run again"
            )
        if k < last:
            want = list(outputs[0].shape)
