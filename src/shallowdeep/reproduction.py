"""The paper's pipeline, end to end: ``reproduce`` trains every stage of each architecture (CNN,
IC-only SDN, SDN from scratch, and the later methods asked for: mixed, ztw, distill), analyzes each
SDN and writes one table of the results, the methods side by side.

Composed from :mod:`~shallowdeep.workflows` (analysis of a run) and the run folders; the stages'
steps compile in a background process (:mod:`~shallowdeep.runs.precompile`) and the IC-only SDN is
analyzed in another while the SDN trains. Knows no command-line flag.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compute.devices import pick_device
from .core.catalog import FROM_CNN_MODES
from .core.children import last_words
from .core.errors import ArgumentError, StageError, UserError
from .core.io import JSONObject, lies_inside, read_json
from .core.schedule import DONE, FAILED, NOT_RUN, Slot, Task, TaskRun, run_tasks
from .data import reuse_loaded
from .reproduction_table import Reproduction, TableRow
from .runs import RunFolder, TrainConfig
from .runs.precompile import CompiledBeside, compiles_beside
from .workflows import Log, analyze_run, kept_analysis


@dataclass(frozen=True)
class StageKind:
    """What one stage of a reproduction trains: the training mode, the settings beyond it (the
    ``TrainConfig`` fields of ZTW's cascades or of distillation) and its epochs by default."""

    mode: str
    epochs: int
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def from_cnn(self) -> bool:
        """Trained on the reproduction's CNN stage (``from_run``), not from scratch."""
        return self.mode in FROM_CNN_MODES


# every stage a reproduction can train, in the order one architecture's stages run: the CNN, the
# methods built on it, then the SDN from scratch. The paper's are cnn, ic-only (25 epochs) and sdn
# (100); the others use the recipes of their modes (docs/methods.md): mixed 25 epochs on the CNN;
# ztw: ZTW's cascaded ICs on the frozen CNN (ZTW trains its ICs on a frozen trained backbone), read
# with ZTW's ensemble rule; distill: IC-only heads distilled from the CNN's final output (0.5, T = 3)
STAGE_KINDS = {
    "cnn": StageKind("cnn", 100),
    "ic-only": StageKind("ic-only", 25),
    "mixed": StageKind("mixed", 25),
    "ztw": StageKind("ic-only", 25, (("cascade", True),)),
    "distill": StageKind("ic-only", 25, (("distill", 0.5), ("distill_temperature", 3.0))),
    "sdn": StageKind("sdn", 100),
}
PAPER_EPOCHS = {k: s.epochs for k, s in STAGE_KINDS.items()}
STAGES = tuple(STAGE_KINDS)  # in the order they run
METHODS = tuple(k for k in STAGES if k != "cnn")  # the SDN-producing stages, one table row each
PAPER_METHODS = ("ic-only", "sdn")
# what the paper claims (spec sections 7-9), printed beside the measured figures
PAPER_CLAIMS = {
    "early_exit": "average cost down by more than 50 % on CIFAR-10 and CIFAR-100 (about 25 % on Tiny ImageNet) "
    "with accuracy within a point of the final output",
    "early_share": "up to about 95 % of inputs are right at some output before the final one",
    "destructive_share": "about 50 % of the final output's errors are right at some IC",
    "confusion": "confusion separates errors from correct answers better than the final output's confidence",
}


def _stage(
    out: Path,
    cfg: dict[str, Any],
    log: Log,
    progress: bool,
    beside: CompiledBeside | None = None,
) -> tuple[float, float, JSONObject | None]:
    """Train one stage into ``out`` unless it is finished: a new run, or a resumed one. Returns the
    stage's wall seconds over every call (a run written before they were recorded: its epochs' sum),
    the sum of its epochs' times (training and validation only), resumed epochs included, and how
    it trained (run.json's ``runtime``).
    ``beside`` (the background compiler) goes to :func:`~shallowdeep.runs.train_run`."""
    from .runs import train_run

    folder = RunFolder(out)
    hooks = {"progress": progress, "log": log, "beside": beside}
    if folder.exists():
        meta = folder.meta()
        if not meta.complete:
            train_run(
                TrainConfig(
                    out=str(out),
                    resume=True,
                    device=cfg.get("device"),
                    precision=cfg.get("precision"),
                    compile=cfg.get("compile"),
                ),
                **hooks,
            )
        elif log is not None:
            log(f"{out} is finished: kept")
    else:
        train_run(TrainConfig(out=str(out), **cfg), **hooks)
    return _stage_times(out)


def _stage_times(out: Path) -> tuple[float, float, JSONObject | None]:
    """A trained stage's wall seconds over every call, the part in epochs, how it trained (see :func:`_stage`)."""
    meta = RunFolder(out).meta()
    epochs = float(sum(meta.epoch_seconds()))
    return meta.wall_seconds or epochs, epochs, meta.runtime


@reuse_loaded()  # every stage and analysis of one call reads the same data set: listed and read once
def reproduce(
    data: str,
    out: str | Path,
    archs: list[str],
    *,
    data_root: str | None = None,
    image_size: int | None = None,
    epochs: dict[str, int] | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    seed: int | None = None,
    methods: tuple[str, ...] = PAPER_METHODS,
    stages: tuple[str, ...] | None = None,
    max_concurrent: int | None = None,
    gpus: list[int] | None = None,
    log: Log = print,
    progress: bool = True,
) -> Reproduction:
    """The paper's pipeline per architecture: CNN, IC-only SDN from it, SDN from scratch, both SDNs
    analyzed (thresholds calibrated on validation); then one table as ``reproduction.md``,
    ``reproduction.json`` and ``index.html`` (linking every report) in ``out``. ``methods`` (of
    :data:`METHODS`; default the paper's ic-only and sdn) are the SDNs it trains, each a row of the
    table and of its methods table (accuracy at 25/50/75/100 % of the CNN's cost and the curve's
    area, per exit rule); the CNN stage comes with any method built on it. Every stage is its own
    run folder, so a killed reproduction resumes where it stopped. ``stages`` runs part of it (e.g.
    only ``("sdn",)`` when time is short); a later call with every stage keeps the finished ones.
    ``max_concurrent`` stages that do not depend on each other run at once, each in its own process
    (default :data:`CONCURRENT_PER_DEVICE`), spread over ``gpus`` (default: every visible GPU) on CUDA."""
    from .compute.distributed import join

    started = time.perf_counter()
    out = Path(out)
    stages = _checked_stages(methods, stages)
    epochs = _checked_request(data, out, archs, stages, epochs)
    # under torchrun every rank trains and collects its shard of each stage; rank 0 analyzes and writes
    place, dev = join(str(pick_device(device)))
    if not place.main:
        log, progress = None, False
    concurrent, slots = _concurrency(dev, max_concurrent, gpus, place.enabled)
    out.mkdir(parents=True, exist_ok=True)
    asked = {k: epochs[k] for k in _checked_stages(methods, None)}  # the table states the epochs of its stages
    result = Reproduction(
        data, dev, asked, paper_claims=dict(PAPER_CLAIMS), max_concurrent=concurrent, methods=list(methods)
    )

    publish = _publisher(out, result, started)
    common = {"data": data, "data_root": data_root, "image_size": image_size, "device": device}
    common |= {"precision": precision, "compile": compile, "seed": seed}
    if concurrent > 1:
        _run_concurrently(_Concurrent(out, dev, concurrent, slots, result, publish, log), archs, stages, epochs, common)
        return _finished(result, publish, log)
    # the stages this call trains anew get their steps compiled in a background process, in training
    # order, and each trains eagerly until its step is in the compiler's cache (one process on one
    # GPU; under torchrun no stage compiles by default)
    plan = [] if place.enabled or not compiles_beside(dev) else _compile_ahead_plan(out, archs, stages, epochs, common)
    beside = CompiledBeside(plan, log)
    try:
        for arch in archs:
            one = _ArchStages(out, arch, dev, place.main, beside, result.rows, publish, log, progress)
            _run_stages(one, stages, epochs, {"arch": arch, **common}, place.enabled)
    finally:
        compiled = beside.finish()
        if compiled is not None:
            result.compiled_ahead = compiled
    return _finished(result, publish if place.main else None, log)


def _finished(result: Reproduction, publish: Callable[[], None] | None, log: Log) -> Reproduction:
    """The table written (by the main process) and logged."""
    from . import report

    if publish is not None:
        publish()
    if log is not None:
        log(report.reproduction_markdown(result))
    return result


def _publisher(out: Path, result: Reproduction, started: float) -> Callable[[], None]:
    """Writes the table so far (after every analysis, so a killed reproduction still leaves it)."""
    from . import report
    from .core.io import write_bytes, write_json

    def publish() -> None:
        result.call_seconds = time.perf_counter() - started
        write_json(out / "reproduction.json", result.to_json())
        write_bytes(out / "reproduction.md", report.reproduction_markdown(result).encode())
        write_bytes(out / "index.html", report.reproduction_html(result).encode())

    return publish


def _check_same_stage(out: Path, data: str, arch: str, stage: str, epochs: int) -> None:
    """A stage found in ``out`` is kept (or resumed) only if it is the one asked for: the same mode,
    epochs, cascades and distillation and, trained from scratch, data set and architecture (a stage
    built on the CNN: from this reproduction's CNN)."""
    meta, kind = RunFolder(out).meta(), STAGE_KINDS[stage]
    have: dict[str, Any] = {"mode": meta.config.mode, "epochs": meta.recipe.epochs}
    want: dict[str, Any] = {"mode": kind.mode, "epochs": epochs}
    settings = dict(kind.settings)
    have["cascade"], want["cascade"] = bool(meta.config.cascade), bool(settings.get("cascade"))
    have["distill"], want["distill"] = meta.recipe.distill, settings.get("distill", 0.0)
    if kind.from_cnn:
        have["from"] = str(Path(meta.config.from_run or "").resolve())
        want["from"] = str((out.parent / "cnn").resolve())
    else:
        have |= {"data": _data_key(meta.config.data), "arch": meta.config.arch}
        want |= {"data": _data_key(data), "arch": arch}
    differ = [k for k in want if have[k] != want[k]]
    if differ:
        said = ", ".join(f"{k} {have[k]!r} (asked: {want[k]!r})" for k in differ)
        raise ArgumentError(
            f"{out} holds another stage than this reproduction asks for: {said}; give another `out`, "
            "or leave that stage out of `stages`"
        )


def _data_key(spec: str) -> str:
    """A data set's name with an image folder's path resolved (relative and absolute paths agree)."""
    name, _, arg = spec.partition(":")
    return f"{name}:{Path(arg).expanduser().resolve()}" if arg else name


RESULTS = ("reproduction.json", "reproduction.md", "index.html")


def _check_destinations(out: Path, archs: list[str]) -> None:
    """Every path a reproduction writes, checked before the first write: ``out`` holds no training
    run, its results are files, and each architecture's folder and stage folders lie inside ``out``
    once links are resolved and hold a run or nothing."""
    if RunFolder(out).exists():
        raise ArgumentError(
            f"{out} holds a training run (run.json): give `out` a new folder, or one a reproduction wrote"
        )
    for name in RESULTS:
        p = out / name
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise ArgumentError(f"{p} is a link or a folder, not a result file: remove it, or give another `out`")
    for arch in archs:
        for part in (out / arch, *(out / arch / stage for stage in STAGES)):
            if part.is_symlink() or not lies_inside(part, out):
                raise ArgumentError(
                    f"{part} leads outside {out} (a symbolic link): remove the link, or give another `out`"
                )
            if part.exists() and not part.is_dir():
                raise ArgumentError(f"{part} exists and is not a folder: remove it, or give another `out`")
            if part != out / arch and part.is_dir() and any(part.iterdir()) and not RunFolder(part).exists():
                raise ArgumentError(f"{part} holds files but no run (no run.json): remove them, or give another `out`")


def _checked_request(
    data: str, out: Path, archs: list[str], stages: tuple[str, ...], epochs: dict[str, int] | None
) -> dict[str, int]:
    """Every argument checked before any folder is made; the epochs of every stage."""
    from .data import parse_data_name
    from .models import list_archs

    if not archs:
        raise ArgumentError("`archs` names no architecture: give at least one")
    for a in archs:
        if a not in list_archs():
            raise ArgumentError(f"unknown architecture {a!r} in `archs`: choose from {', '.join(list_archs())}")
    strange = sorted(set(epochs or {}) - set(STAGES))
    if strange:
        raise ArgumentError(f"`epochs` names unknown stages ({', '.join(map(str, strange))}): use {', '.join(STAGES)}")
    epochs = {**PAPER_EPOCHS, **(epochs or {})}
    for stage, n in epochs.items():
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 100_000):
            raise ArgumentError(f"the {stage} stage needs a whole number of epochs in 1..100000, got {n!r}")
    parse_data_name(data)  # an unknown data set is refused before any folder is made
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    _check_destinations(out, archs)
    for a in archs:
        for stage in stages:
            if RunFolder(out / a / stage).exists():
                _check_same_stage(out / a / stage, data, a, stage, epochs[stage])
    on_cnn = [k for k in stages if STAGE_KINDS[k].from_cnn]
    if on_cnn and "cnn" not in stages:
        for a in archs:
            if not RunFolder(out / a / "cnn").finished():
                raise ArgumentError(
                    f"the {on_cnn[0]} stage needs a finished CNN in {out / a / 'cnn'}: add the cnn stage to `stages`"
                )
    return epochs


def _checked_stages(methods: tuple[str, ...], stages: tuple[str, ...] | None) -> tuple[str, ...]:
    """The stages of the asked ``methods`` (each known, none twice) that this call runs, in training
    order: ``stages`` when given (each one of them, or the CNN they build on), else all of them."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ArgumentError(
            f"`methods` must name distinct methods of {', '.join(METHODS)}, "
            f"got {', '.join(map(str, methods)) or 'none'}"
        )
    have = ("cnn",) * any(STAGE_KINDS[m].from_cnn for m in methods) + methods
    if stages is None:
        return tuple(k for k in STAGES if k in have)
    stages = tuple(stages)
    unknown = [x for x in stages if x not in have]
    if unknown or not stages:
        raise ArgumentError(
            f"unknown or no stage in `stages` ({', '.join(map(str, unknown)) or 'none given'}): choose from "
            f"{', '.join(k for k in STAGES if k in have)} (the stages of `methods`)"
        )
    return tuple(k for k in STAGES if k in stages)


def _run_stages(
    one: _ArchStages, stages: tuple[str, ...], epochs: dict[str, int], common: dict[str, Any], distributed: bool
) -> None:
    """One architecture's stages in order (:data:`STAGES`), each SDN analyzed before the next stage
    trains (beside it, in a background process, where :func:`_analysis_beside` says): the paper's
    central results (overthinking, early exits of a trained CNN) exist even if the last stage is cut short."""
    if "cnn" in stages:
        one.train("cnn", _stage_config(one.base, "cnn", epochs, common))
    sdns = [k for k in stages if k != "cnn"]
    for i, kind in enumerate(sdns):
        try:
            one.train(kind, _stage_config(one.base, kind, epochs, common))
        except BaseException:  # the analyses beside it finish their reports; the stage's error goes on
            one.wait_background()
            raise
        one.finish_background()
        later = one.base / sdns[i + 1] if i + 1 < len(sdns) else None
        one.analyze(kind, beside_next=later is not None and _analysis_beside(later, one.dev, distributed))
    one.finish_background()


def _stage_config(base: Path, kind: str, epochs: dict[str, int], common: dict[str, Any]) -> dict[str, Any]:
    """The training request of stage ``kind`` in architecture folder ``base``: a stage built on the
    CNN takes its architecture and data from the CNN stage and keeps only how it runs."""
    k = STAGE_KINDS[kind]
    cfg = {"mode": k.mode, "epochs": epochs[kind], **dict(k.settings)}
    if not k.from_cnn:
        return {**common, **cfg}
    keep = ("seed", "device", "precision", "compile")
    return cfg | {"from_run": str(base / "cnn")} | {x: common[x] for x in keep}


class _ArchStages:
    """One architecture's stages in a reproduction: trains each (or keeps it, finished), analyzes it
    here or in a background process beside the next stage, and adds its row to the table with the wall
    time of every stage and analysis so far (the rows of one architecture share these dicts, filled
    in as its stages finish)."""

    def __init__(
        self,
        out: Path,
        arch: str,
        dev: str,
        main: bool,
        beside: CompiledBeside,
        rows: list[TableRow],
        publish: Callable[[], None],
        log: Log,
        progress: bool,
    ) -> None:
        self.out, self.base, self.arch, self.dev, self.main = out, out / arch, arch, dev, main
        self.beside, self.rows, self.publish, self.log, self.progress = beside, rows, publish, log, progress
        self.seconds: dict[str, float] = {}  # wall seconds per stage and analysis (an analysis: the pipeline's part)
        self.in_epochs: dict[str, float] = {}  # training stages: the part spent in epochs
        self.in_background: dict[str, float] = {}  # analyses run beside a stage: their own wall time
        self.runtimes: dict[str, JSONObject] = {}  # how each training stage ran (run.json's runtime)
        self.pending: list[tuple[str, float, Any]] = []  # (kind, seconds spent here, analysis process)

    def train(self, kind: str, cfg: dict[str, Any]) -> None:
        """Train stage ``kind`` (see :func:`_stage`), its step compiled beside it if planned."""
        _stage(self.base / kind, cfg, self.log, self.progress, self.beside)
        self.record_trained(kind)

    def record_trained(self, kind: str) -> None:
        """Stage ``kind``'s times and runtime from its finished run folder."""
        self.seconds[kind], self.in_epochs[kind], self.runtimes[kind] = _stage_times(self.base / kind)

    def analyze(self, kind: str, beside_next: bool = False) -> None:
        """Analyze stage ``kind``: keep an analysis of these weights, else analyze it here, or, with
        ``beside_next``, start a background process for it (:meth:`finish_background` adds its row)."""
        run, t0 = self.base / kind, time.perf_counter()
        json_path = kept_analysis(run)  # every rank sees the same files: all take one branch
        if json_path is None and beside_next:
            # all of it (records on this device, analyses, figures, report) in a child process while
            # the next stage trains: the records are a few seconds of the GPU beside that stage's
            # steps (a second process on the GPU, as the background compilation already is)
            if self.log is not None:
                self.log(f"analyzing {run} in a background process while the next stage trains")
            here = time.perf_counter() - t0
            self.pending.append((kind, here, _analysis_process(run, here, self.dev)))
            return
        if json_path is None:
            json_path = analyze_run(run, device=self.dev, log=self.log).json
            self.seconds[f"analyze {kind}"] = time.perf_counter() - t0
        else:  # analyzed by an earlier call: its time, as it was measured then
            rep = read_json(json_path)
            if isinstance(rep.get("pipeline_seconds"), (int, float)):  # made beside a stage
                self.seconds[f"analyze {kind}"] = float(rep["pipeline_seconds"])
                self.in_background[f"analyze {kind}"] = float(rep["wall_seconds"])
            else:
                self.seconds[f"analyze {kind}"] = float(rep["wall_seconds"])
            if self.log is not None:
                self.log(f"{json_path.parent} is the analysis of these weights: kept")
        if self.main:  # other ranks helped collect the records; the report and the table are rank 0's
            self._add_row(kind, json_path)

    def finish_background(self) -> None:
        """Wait for the background analyses and add their rows; one that failed is done here again,
        where its error reaches the user."""
        while self.pending:
            kind, here, process = self.pending.pop(0)
            t0 = time.perf_counter()
            status = process.wait()
            why = last_words(process.said, status)
            json_path = kept_analysis(self.base / kind) if status == 0 else None
            if json_path is None:
                if self.log is not None:
                    self.log(f"the background analysis of {self.base / kind} failed ({why}): analyzing it here")
                json_path = analyze_run(self.base / kind, device=self.dev, log=self.log).json
            else:
                self.in_background[f"analyze {kind}"] = float(read_json(json_path)["wall_seconds"])
            self.seconds[f"analyze {kind}"] = here + time.perf_counter() - t0  # the part the pipeline waited for
            self._add_row(kind, json_path)

    def wait_background(self) -> None:
        """Let the background analyses finish their reports (when a stage failed: no rows added)."""
        for _, _, process in self.pending:
            process.wait()

    def _add_row(self, kind: str, json_path: Path) -> None:
        meta = RunFolder(self.base / kind).meta()
        epoch_s = sorted(meta.epoch_seconds())
        report = json_path.parent / "report.html"
        row = TableRow.from_report(self.arch, kind, read_json(json_path), epoch_s, meta.runtime, report, self.out)
        row.stage_seconds, row.stage_epoch_seconds = self.seconds, self.in_epochs
        row.stage_background_seconds, row.stage_runtime = self.in_background, self.runtimes
        self.rows.append(row)
        self.publish()


# device types on which an analysis runs in a background process beside the next stage: there the
# stage keeps the GPU busy and leaves the CPU's cores idle; on a CPU both would want the same cores
ANALYSIS_BESIDE_ON = ("cuda",)


def _analysis_beside(next_stage: Path, dev: str, distributed: bool) -> bool:
    """Whether to analyze a stage in the background while ``next_stage`` trains: it is not finished
    yet, the device is of :data:`ANALYSIS_BESIDE_ON`, and one process runs (under torchrun every rank
    collects its shard)."""
    if distributed or dev.split(":")[0] not in ANALYSIS_BESIDE_ON:
        return False
    return not RunFolder(next_stage).finished()


def _analysis_process(run: Path, pipeline_seconds: float, device: str) -> Any:
    """A child process running :func:`_analyze_beside` on ``run``; its exit status says whether it
    worked, and what it wrote to stderr (kept in a temporary file, ``process.said``) why not."""
    import subprocess
    import tempfile

    from .core.children import python_child

    said = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads while it runs, and a pipe fills up
    process = python_child(
        [
            "-c",
            "import sys; from shallowdeep.reproduction import _analyze_beside; "
            "_analyze_beside(sys.argv[1], float(sys.argv[2]), sys.argv[3])",
            str(run),
            repr(pipeline_seconds),
            device,
        ],
        stdout=subprocess.DEVNULL,
        stderr=said,
    )
    process.said = said
    return process


def _analyze_beside(run: str | Path, pipeline_seconds: float, device: str = "cpu") -> Path:
    """:func:`analyze_run` with the defaults a reproduction uses, its records collected on ``device``,
    as a reproduction's background process runs it; ``report.json`` also records
    ``pipeline_seconds``, what the pipeline spent on this analysis itself (starting it), so that a
    later call keeping this analysis counts that part, not the background time, in the table's total."""
    json_path = analyze_run(run, device=device).json
    rep = read_json(json_path)
    rep["pipeline_seconds"] = float(pipeline_seconds)
    RunFolder(run).write_json(json_path, rep)
    return json_path


def _compile_ahead_plan(
    out: Path, archs: list[str], stages: tuple[str, ...], epochs: dict[str, int], common: dict[str, Any]
) -> list[tuple[str, Any]]:
    """The stages to compile in the background, in the order this call trains them, each as
    ``(name, TrainConfig)``: every stage it trains as a new run that would compile. A stage resumed
    keeps its recorded settings and is not planned. A stage built on the CNN names its arch and data
    (its CNN run may not exist yet)."""
    from .runs.train import may_compile

    plan = []
    for arch in archs:
        for kind in stages:
            folder, k = RunFolder(out / arch / kind), STAGE_KINDS[kind]
            if not folder.exists():  # trained anew in this call
                more = {"mode": k.mode, "arch": arch, "epochs": epochs[kind], **dict(k.settings)}
                cfg = TrainConfig(out=str(folder.path), **more, **common)
                if may_compile(cfg):
                    plan.append((f"{arch}/{kind}", cfg))
    return plan


# stages run at once per device by default. CPU: 1, measured on the 2-core development VM (two
# stages at once share its cores, and each child keeps the parent's thread count so that its weights
# equal the sequential ones bit for bit, see docs/reproduction.md); CUDA: 2 per GPU, not yet measured
# on a GPU (benchmarks/gpu_proof.sh has the row that measures it): a stage's step is bound by kernel
# launches, so a second process fills the GPU's idle time between them
CONCURRENT_PER_DEVICE = {"cpu": 1, "cuda": 2}


def _concurrency(
    dev: str, max_concurrent: int | None, gpus: list[int] | None, distributed: bool
) -> tuple[int, list[Slot]]:
    """How many stages run at once, and the devices (slots) they are spread over, checked."""
    if max_concurrent is not None and not (
        isinstance(max_concurrent, int) and not isinstance(max_concurrent, bool) and 1 <= max_concurrent <= 64
    ):
        raise ArgumentError(f"`max_concurrent` must be a whole number in 1..64, got {max_concurrent!r}")
    kind = dev.split(":")[0]
    if distributed:
        if (max_concurrent or 1) > 1 or gpus:
            raise ArgumentError(
                "`max_concurrent` and `gpus` do not apply under torchrun (every rank trains each stage in "
                "shards): leave them out, or run without torchrun"
            )
        return 1, []
    if kind != "cuda":
        if gpus:
            raise ArgumentError(f"`gpus` needs a CUDA device, but the reproduction runs on {dev}: leave `gpus` out")
        return max_concurrent or CONCURRENT_PER_DEVICE.get(kind, 1), [Slot(dev)]
    ids = _gpu_ids(dev, gpus)
    # a child sees one GPU; its number in the parent's CUDA_VISIBLE_DEVICES (or the machine's)
    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    slots = [Slot(f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": visible[i] if visible else str(i)}) for i in ids]
    return max_concurrent or CONCURRENT_PER_DEVICE["cuda"] * len(ids), slots


def _gpu_ids(dev: str, gpus: list[int] | None) -> list[int]:
    """The GPUs a CUDA reproduction spreads its stages over: ``gpus`` checked, or ``dev``'s own
    index, or every visible one."""
    import torch

    count = torch.cuda.device_count()
    if gpus is None:
        index = torch.device(dev).index
        return [index] if index is not None else list(range(count))
    bad = [g for g in gpus if not (isinstance(g, int) and not isinstance(g, bool) and 0 <= g < count)]
    if bad or not gpus or len(set(gpus)) != len(gpus):
        raise ArgumentError(
            f"`gpus` must name distinct visible GPUs in 0..{count - 1}, got {gpus!r}: "
            "give numbers such as 0,1 (counted within CUDA_VISIBLE_DEVICES)"
        )
    return list(gpus)


@dataclass
class _Concurrent:
    """What a concurrent reproduction shares between its architectures: where it writes, the device,
    how many stages run at once and where, the table and its writer, the log."""

    out: Path
    dev: str
    max_concurrent: int
    slots: list[Slot]
    result: Reproduction
    publish: Callable[[], None]
    log: Log


def _run_concurrently(
    c: _Concurrent, archs: list[str], stages: tuple[str, ...], epochs: dict[str, int], common: dict[str, Any]
) -> None:
    """Every architecture's stages as one dependency graph (CNN → each method built on it → its
    analysis; SDN → its analysis), independent stages in child processes at once
    (:func:`~shallowdeep.core.schedule.run_tasks`); finished stages and kept analyses are not run
    again. A failed stage stops only what needs it; the table holds the rest, then
    :class:`StageError` names it."""
    import torch

    threads = torch.get_num_threads()  # the children's too: the same weights as one after another
    per_arch, tasks = {}, []
    for arch in archs:
        one = _ArchStages(c.out, arch, c.dev, True, CompiledBeside([], c.log), c.result.rows, c.publish, c.log, False)
        per_arch[arch] = one
        tasks += _arch_tasks(one, stages, epochs, {"arch": arch, **common}, threads, bool(c.slots[0].env))
    if c.log is not None:
        where = ", ".join(s.name for s in c.slots)
        c.log(f"{len(tasks)} stages and analyses to run, at most {c.max_concurrent} at once on {where}")
    runs = run_tasks(tasks, c.slots, c.max_concurrent, c.log, lambda run: _task_ended(per_arch, run, c.log))
    order = {(a, k): i for i, (a, k) in enumerate((a, k) for a in archs for k in METHODS)}
    c.result.rows.sort(key=lambda r: order[(r.arch, r.kind)])
    c.result.schedule = runs
    c.publish()
    failed = [r for r in runs if r.status == FAILED]
    if failed:
        skipped = [r.name for r in runs if r.status == NOT_RUN]
        said = "; ".join(f"{r.name} failed ({r.why})" for r in failed)
        raise StageError(
            f"{said}; not run for it: {', '.join(skipped) or 'nothing'}; every other stage finished and is kept: "
            "fix the cause and run the same reproduction again"
        )


def _arch_tasks(
    one: _ArchStages,
    stages: tuple[str, ...],
    epochs: dict[str, int],
    common: dict[str, Any],
    threads: int,
    one_gpu_each: bool,
) -> list[Task]:
    """One architecture's tasks: each stage not finished yet, each analysis not kept; what is
    finished or kept goes into the table now."""
    tasks: list[Task] = []
    if one_gpu_each:  # a child sees its one GPU only, as cuda
        common = {**common, "device": "cuda"}
    cnn_later = "cnn" in stages and not RunFolder(one.base / "cnn").finished()
    for kind in stages:
        name, run = f"{one.arch}/{kind}", one.base / kind
        trained_here = not RunFolder(run).finished()
        if not trained_here:
            one.record_trained(kind)
            if one.log is not None:
                one.log(f"{run} is finished: kept")
        else:
            needs = (f"{one.arch}/cnn",) if STAGE_KINDS[kind].from_cnn and cnn_later else ()
            cfg = _stage_config(one.base, kind, epochs, common)
            tasks.append(_child_task(name, {"train": str(run), "cfg": cfg, "threads": threads}, needs))
        if kind == "cnn":
            continue
        if not trained_here and kept_analysis(run) is not None:
            one.analyze(kind)  # kept: its row now
            continue
        spec = {"analyze": str(run), "device": common["device"] or one.dev, "threads": threads}
        tasks.append(_child_task(f"{one.arch}/analyze {kind}", spec, (name,) if trained_here else ()))
    return tasks


def _child_task(name: str, spec: JSONObject, needs: tuple[str, ...]) -> Task:
    """A task whose child process runs :func:`_task_child` on ``spec``."""
    code = "import sys; from shallowdeep.reproduction import _task_child; _task_child(sys.argv[1])"
    return Task(name, ["-c", code, json.dumps(spec)], needs)


def _task_ended(per_arch: dict[str, _ArchStages], run: TaskRun, log: Log) -> None:
    """A task of :func:`_run_concurrently` ended: its times (and, an analysis, its row) into the table."""
    arch, _, what = run.name.partition("/")
    one = per_arch[arch]
    if run.status != DONE:
        if log is not None:
            log(f"{run.name} {run.status}: {run.why}")
        return
    if what.startswith("analyze "):
        kind = what.removeprefix("analyze ")
        json_path = kept_analysis(one.base / kind)
        if json_path is None:  # the child said it analyzed: its report must be there
            raise RuntimeError(f"{one.base / kind} has no analysis after its task ended")
        one.seconds[what] = run.seconds or 0.0
        one._add_row(kind, json_path)
    else:
        one.record_trained(what)


def _task_child(spec_json: str) -> None:
    """In a child process of :func:`_run_concurrently`: train one stage, or analyze one, as the
    sequential pipeline does; one line per epoch on stdout (the parent prefixes it)."""
    import torch

    from .core.children import end_with_parent

    end_with_parent()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    spec = json.loads(spec_json)
    torch.set_num_threads(int(spec["threads"]))
    try:
        if "train" in spec:
            _stage(Path(spec["train"]), spec["cfg"], print, False)
        else:
            analyze_run(spec["analyze"], device=spec["device"], log=print)
    except UserError as error:  # one line, as the command line gives it (the parent shows the last line)
        print(error, file=sys.stderr)
        sys.exit(2)
