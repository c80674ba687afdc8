"""What the commands do, composed from the layers below: train a run (its step compiled beside it),
analyze it, explain it, export it. The paper's whole pipeline is :mod:`~shallowdeep.reproduction`.

Knows run folders, analyses and the report; knows no command-line flag.
"""

from __future__ import annotations

import base64
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import DEFAULT_RULES, AnalysisOptions, BackdoorSpec, ExitRecord, ExitRule, RunAnalysis, analyze
from .analysis.latency import LatencyBudget
from .analysis.methods import MethodRow, RunRecords, compare_methods
from .compute import distributed
from .compute.devices import pick_device
from .core.errors import ArgumentError, RunFolderError, UserError
from .core.io import JSONObject, read_json, write_bytes
from .core.latency import LatencyProfile
from .core.stopwatch import Stopwatch
from .data import Dataset
from .data.corruption import parse_corruptions
from .data.unfamiliar import check_unfamiliar, unfamiliar_key
from .runs import RunFolder, RunMeta, TrainConfig, backdoor_of, run_data, run_records, save_calibration
from .runs.attacks import attacked_records
from .runs.latency import latency_file, read_latency
from .runs.precompile import CompiledBeside, compiles_beside
from .runs.weights import load

Log = Callable[[str], None] | None
# the splits an analysis collects records of (and, for a backdoored run, the triggered test split)
ANALYZED_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AnalyzedRun:
    """What :func:`analyze_run` made: the report's page and JSON, and the typed analysis they show
    (``None`` on a torchrun rank that only helped collect the records)."""

    html: Path | None  # None: analyzed with ``html=False``
    json: Path
    analysis: RunAnalysis | None


def analyze_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    max_drop: float = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
    device: str = "cpu",
    rules: list[str] | None = None,
    rule: str = "max_softmax",
    thresholds: str = "auto",
    log: Log = None,
    module: torch.nn.Module | None = None,
    corruptions: str | None = None,
    ood: str | None = None,
    latency_budget: float | None = None,
    latency_percentile: int | None = None,
    latency: str | Path | None = None,
    html: bool = True,
) -> AnalyzedRun:
    """Collect (or reuse) a run's records, analyze them (options: :class:`~shallowdeep.analysis.AnalysisOptions`),
    write the engine's ``calibration.json`` (SDN runs) and the report (``report.html``, ``report.json``);
    a run of the user's own module is rebuilt around ``module`` (:func:`~shallowdeep.runs.load`). An
    SDN's also covers its attacked records, the test split under ``corruptions`` (``"all"``, ``"jpeg,
    contrast:3"``) and the unfamiliar inputs of ``ood`` (a data set name or an image folder); the
    engine's thresholds fit a ``latency_budget`` (ms, its mean or ``latency_percentile``) by ``latency``'s
    stage times (default RUN/latency.json). ``html=False`` writes ``report.json`` and the calibration
    only (no figures, no page: most of a small run's analysis time), and removes an older page."""
    started = time.perf_counter()  # every argument is checked before anything is collected or written
    budget_ms = _latency_budget(latency_budget, latency_percentile, latency)
    compared = tuple(rules) if rules is not None else DEFAULT_RULES
    options = AnalysisOptions(max_drop, budget, fallback, compared, rule, thresholds, budget_ms)
    pick_device(str(device))  # a device that does not exist: one line now, not PyTorch's error mid-collection
    folder, meta = RunFolder(run), RunFolder(run).meta()
    out = Path(out) if out else folder.report
    _check_report_folder(folder, out)
    clock = Stopwatch()  # report.json's time_parts: data, records, analyses, calibration, figures, page
    data = run_data(run)  # for the image grids and class names; the model loads only if a record is missing
    backdoor = backdoor_of(run)
    splits = ANALYZED_SPLITS + (("test+trigger",) if backdoor is not None else ())
    shifted = _shifted_splits(meta, corruptions, ood)  # checked before anything is collected
    profile = _latency_profile(run, meta, latency) if budget_ms is not None else None
    clock.lap("data")
    model = load(run, device, module=module) if module is not None else None  # else loaded if a record is missing
    records = run_records(run, splits + shifted, model=model, data=data, device=device, log=log, ood=ood)
    records |= {str(r.meta["split_name"]): r for r in attacked_records(run)} if meta.model.kind == "sdn" else {}
    clock.lap("records")
    if not distributed.current().main:  # under torchrun the other ranks helped collect; rank 0 writes
        return AnalyzedRun(out / "report.html" if html else None, out / "report.json", None)
    if log is not None:
        log("analyzing the records" + (" and drawing the report" if html else ""))
    spec = BackdoorSpec(backdoor.target, backdoor.to_json()) if backdoor is not None else None
    analysis = analyze(records, options, backdoor=spec, clock=clock, latency=profile)
    explained = _kept_explanation(folder)  # an earlier explain's section and entry, kept in the report
    result = _report_json(folder, meta, analysis, records, clock.parts["analyses"], explained)
    page = _report_page(folder, meta, analysis, records, data, clock, result, explained) if html else None
    clock.lap("page")  # the HTML (figures embedded), the engine's calibration.json
    # what this report was made from and with, so a reproduction run again can keep it
    result |= {"weights_sha256": meta.weights_sha256, "options": options.to_json(), "time_parts": clock.parts}
    result["wall_seconds"] = time.perf_counter() - started
    _write_report(folder, out, result, page)
    _save_engine(run, analysis, records)  # after the report: one that cannot be written leaves the calibration
    _log_done(log, result)
    return AnalyzedRun(out / "report.html" if html else None, out / "report.json", analysis)


def _log_done(log: Log, result: JSONObject) -> None:
    if log is not None:
        laps = ", ".join(f"{k} {v:.1f} s" for k, v in result["time_parts"].items())
        log(f"analyzed in {result['wall_seconds']:.1f} s ({laps})")


def _save_engine(run: str | Path, analysis: RunAnalysis, records: dict[str, ExitRecord]) -> None:
    """The engine's rule, chosen on the validation split and tied to these weights, with the
    validation split's exit profile (an SDN's; a CNN has no engine)."""
    if analysis.engine is not None:
        sha = str(records["test"].meta.get("weights_sha256"))
        save_calibration(run, analysis.engine.calibration, sha, analysis.engine.rule, analysis.engine.profile)


def _latency_budget(ms: float | None, percentile: int | None, path: str | Path | None) -> LatencyBudget | None:
    if ms is None and (percentile is not None or path is not None):
        raise ArgumentError("a `latency_percentile` or `latency` file serves a `latency_budget`: give one")
    return None if ms is None else LatencyBudget(ms, percentile)


def _latency_profile(run: str | Path, meta: RunMeta, path: str | Path | None) -> LatencyProfile:
    """The stage times a latency budget is calibrated against: an SDN run's, measured by ``profile``."""
    if meta.model.kind != "sdn":
        raise ArgumentError("a `latency_budget` chooses an SDN's exit thresholds: this run is a CNN")
    return read_latency(latency_file(run) if path is None else path, run)


def _shifted_splits(meta: RunMeta, corruptions: str | None, ood: str | None) -> tuple[str, ...]:
    """The record names of the corrupted test splits and of the unfamiliar inputs asked for (an SDN's
    only: they measure its exits)."""
    if (corruptions or ood) and meta.model.kind != "sdn":
        raise ArgumentError("corrupted and unfamiliar inputs measure an SDN's exits: this run is a CNN")
    named = tuple(f"test+{c.label}" for c in parse_corruptions(corruptions)) if corruptions else ()
    if ood is not None:
        check_unfamiliar(ood)
        named += (unfamiliar_key(ood),)
    return named


def _meta_line(meta: RunMeta, records: dict[str, ExitRecord], analyses_seconds: float) -> str:
    cfg = meta.config
    return (
        f"{cfg.arch} trained in mode {cfg.mode} on {cfg.data}; {records['test'].num_inputs} test, "
        f"{records['val'].num_inputs} validation, {records['train'].num_inputs} training inputs; analyses took "
        f"{analyses_seconds:.2f}s"
    )


def _report_json(
    folder: RunFolder,
    meta: RunMeta,
    analysis: RunAnalysis,
    records: dict[str, ExitRecord],
    analyses_seconds: float,
    explained: tuple[str, JSONObject] | None,
) -> JSONObject:
    """report.json's body: the analysis, the example images' ids, a kept explanation's entry."""
    cfg, test = meta.config, records["test"]
    names = [r.output for r in analysis.outputs]
    o = analysis.overthinking
    result: JSONObject = {"run": str(folder.path.resolve()), "arch": cfg.arch, "data": cfg.data, "mode": cfg.mode}
    result |= {"meta_line": _meta_line(meta, records, analyses_seconds), **analysis.to_json()}
    result["images"] = {
        "first_correct": {n: [int(test.ids[i]) for i in idx] for n, idx in zip(names, o.examples_first_correct)},
        "only_first_ic": [int(test.ids[i]) for i in o.examples_only_first],
        "note": "test-split ids (positions in the data set's test split)",
    }
    if explained is not None:
        result["explanations"] = explained[1]
    return result


def _report_page(
    folder: RunFolder,
    meta: RunMeta,
    analysis: RunAnalysis,
    records: dict[str, ExitRecord],
    data: Dataset,
    clock: Stopwatch,
    result: JSONObject,
    explained: tuple[str, JSONObject] | None,
) -> str:
    """The report's HTML, its figures drawn from the same analysis as ``result`` (report.json)."""
    from . import report

    test = records["test"]
    classes = data.meta.get("class_names", data.classes)
    figures = report.figures(analysis, test, _pictures(data.test.images), classes, meta.epochs)
    clock.lap("figures")
    names = [r.output for r in analysis.outputs]
    extra = [report.backdoor_section(analysis.backdoor, names, classes)] if analysis.backdoor is not None else []
    if explained is not None:
        extra.append(explained[0])
    engine = analysis.engine
    return report.render_html(
        analysis,
        figures,
        f"shallowdeep report: {folder.path.name}",
        str(result["meta_line"]),
        extra,
        run_meta=meta,
        classes=list(classes),
        engine=(engine.rule.label, engine.calibration) if engine is not None else None,
    )


def _kept_explanation(folder: RunFolder) -> tuple[str, JSONObject] | None:
    """The report section of the run's explanations (``explain``) and their JSON, if they are there."""
    from . import report

    explain_json, explain_png = folder.explain / "explain.json", folder.explain / "explanations.png"
    if not (explain_json.is_file() and explain_png.is_file()):
        return None
    ex = read_json(explain_json)
    try:
        picture = base64.b64encode(explain_png.read_bytes()).decode()
        return report.explanations_section(int(ex["count_total"]), str(ex["split"]), len(ex["inputs"]), picture), ex
    except (KeyError, TypeError, ValueError):
        raise RunFolderError(f"{explain_json} is damaged: explain the run again") from None


def _check_report_folder(folder: RunFolder, out: Path) -> None:
    """The report's folder, checked before anything is collected or written (nothing is made yet):
    a folder or nothing, inside the run when it is the run's own, and in a writable place."""
    import os

    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    if out == folder.report:
        folder.inside(out)
    there = out
    while not there.exists() and there != there.parent:
        there = there.parent  # the folder the missing ones would be made in
    if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):
        raise ArgumentError(f"the report cannot be written in {there} (not a writable folder): choose another `out`")


def _write_report(folder: RunFolder, out: Path, result: JSONObject, page: str | None) -> None:
    """report.json and report.html (``page`` None: an older report.html removed, so no page shows
    another analysis): in the run (through its link checks) or in a folder of the user's."""
    if out == folder.report:
        folder.subfolder(out)
        folder.write_json(out / "report.json", result)
        if page is not None:
            folder.write_bytes(out / "report.html", page.encode())
    else:
        from .core.io import write_bytes, write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", result)
        if page is not None:
            write_bytes(out / "report.html", page.encode())
    old = out / "report.html"
    if page is None and (old.is_file() or old.is_symlink()):
        old.unlink()  # a link itself, never what it points to


# analyze_run's own defaults: what `reproduce` analyzes with, read from one place
_ANALYZE_DEFAULTS = {k: p.default for k, p in inspect.signature(analyze_run).parameters.items()}


def _default_options() -> AnalysisOptions:
    d = _ANALYZE_DEFAULTS
    rules = tuple(d["rules"]) if d["rules"] is not None else DEFAULT_RULES
    return AnalysisOptions(d["max_drop"], d["budget"], d["fallback"], rules, d["rule"], d["thresholds"])


def kept_analysis(run: str | Path) -> Path | None:
    """The run's report.json if it is an analysis with the default options of these very weights
    (and the engine's calibration is there), else ``None``: analyzing again would give the same."""
    folder = RunFolder(run)
    path = folder.report / "report.json"
    if not (path.is_file() and (folder.report / "report.html").is_file() and folder.calibration.is_file()):
        return None  # a reproduction links each report's page
    try:
        rep, weights = read_json(path), folder.meta().weights_sha256
    except UserError:
        return None  # damaged: analyze again
    if not (
        isinstance(rep, dict)
        and weights
        and rep.get("weights_sha256") == weights
        and rep.get("options") == _default_options().to_json()
        and isinstance(rep.get("wall_seconds"), (int, float))
    ):
        return None
    from .reproduction_table import TableRow

    try:  # what a reproduction reads from it: a report its table cannot read is analyzed again
        TableRow.from_report("-", "-", rep, [], {}, path, path.parent)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration):
        return None
    return path


def explain_run(
    run: str | Path, split: str = "test", limit: int = 8, device: str = "cpu", log: Log = None
) -> JSONObject:
    """Explain a run's IC-1-right/final-wrong inputs; write PNG grids and ``explain.json`` into the
    run's ``explain/`` folder, where the report finds them."""
    from .inference.explain import disagreements, require_grad_cam

    folder = RunFolder(run)
    if folder.kind() != "sdn":
        raise RunFolderError(
            f"{run} is a plain CNN run: explanations compare IC 1 with the final output; make it an "
            "SDN by ic-only training first"
        )
    if limit < 1:
        raise ArgumentError(f"`limit` must be at least 1, got {limit}")
    if split not in ("train", "val", "test"):
        raise ArgumentError(f"unknown `split` {split!r}: choose train, val or test")
    pick_device(str(device))
    require_grad_cam()
    model = load(run, device)
    data = run_data(run)
    record = run_records(run, (split,), model=model, data=data, device=device, log=log)[split]
    pick = disagreements(record, limit)
    out = folder.subfolder(folder.explain)
    for old in out.glob("input_*.png"):  # images of an earlier, possibly longer, explanation
        if old.is_file() and not old.is_symlink():
            old.unlink()
    result: JSONObject = {
        "split": split,
        "count_total": int((record.correct[:, 0] & ~record.correct[:, -1]).sum()),
        "inputs": [],
        "files": [],
    }
    if len(pick):
        _write_explanations(folder, out, model, data, record, pick, split, device, result)
    folder.write_json(out / "explain.json", result)
    return result | {"folder": str(out)}


def _write_explanations(
    folder: RunFolder,
    out: Path,
    model: Any,
    data: Dataset,
    record: ExitRecord,
    pick: np.ndarray,
    split: str,
    device: str,
    result: JSONObject,
) -> None:
    """Grad-CAM of IC 1 and the final output for the ``pick``ed inputs: one grid of all, one per
    input, each listed in ``result``."""
    from . import report
    from .data import normalize
    from .inference.explain import PANEL_TITLES, explain_output, explanation_panels

    names = list(data.meta.get("class_names", data.classes))
    s = data.split(split)
    x = normalize(s.images[pick], data.mean, data.std).contiguous().to(device)
    first = explain_output(model, x, 0, record.preds[pick, 0])
    final = explain_output(model, x, model.num_outputs - 1, record.preds[pick, -1])
    panels = explanation_panels(s.images[pick].numpy(), first, final)
    labels = [
        f"true {names[record.labels[i]]}\nIC 1: {names[record.preds[i, 0]]}\nfinal: {names[record.preds[i, -1]]}"
        for i in pick
    ]
    folder.write_bytes(out / "explanations.png", report.explanation_grid(panels, PANEL_TITLES, labels))
    result["files"].append("explanations.png")
    for j, i in enumerate(pick):
        name = f"input_{int(record.ids[i])}.png"
        folder.write_bytes(out / name, report.explanation_grid(panels[j : j + 1], PANEL_TITLES, labels[j : j + 1]))
        result["files"].append(name)
        result["inputs"].append(
            {
                "id": int(record.ids[i]),
                "true": names[record.labels[i]],
                "ic1": names[record.preds[i, 0]],
                "final": names[record.preds[i, -1]],
                "ic1_cam_mean": float(np.mean(first.cam[j])),
                "final_cam_mean": float(np.mean(final.cam[j])),
                "file": name,
            }
        )


def train(cfg: TrainConfig, *, progress: bool = True, log: Log = print) -> Path:
    """Train a run like :func:`~shallowdeep.runs.train_run`; a new run that compiles (by default on one
    GPU) has its step compiled by a background process while it trains its first epochs eagerly,
    instead of waiting for the compiler (not under torchrun, not for a resumed run)."""
    from .compute.distributed import from_env
    from .runs import train_run
    from .runs.train import may_compile

    new = (
        not from_env().enabled
        and compiles_beside(str(pick_device(cfg.device)))
        and not RunFolder(cfg.out).exists()
        and may_compile(cfg)
    )
    beside = CompiledBeside([(str(cfg.out), cfg)] if new else [], log)
    try:
        return train_run(cfg, progress=progress, log=log, beside=beside)
    finally:
        beside.finish()


class _Pictures:
    """``images[i]`` as a uint8 array, decoding one file at a time for a streamed split."""

    def __init__(self, images: Any) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[int(i)].numpy()


def _pictures(images: Any) -> Any:
    """The report's example images: the array itself in memory, a lazy view of a streamed split."""
    return images.numpy() if isinstance(images, torch.Tensor) else _Pictures(images)


def export_run(run: str | Path, out: str | Path, opset: int | None = None, quantize: str | None = None) -> Path:
    """Export a calibrated SDN run as ONNX stages + ``manifest.json`` (see :mod:`shallowdeep.inference.export`);
    ``quantize="int8"``: INT8 stages, thresholds re-calibrated on them (:mod:`shallowdeep.runs.quantized`)."""
    from .core.io import sha256_file
    from .inference.export import DEFAULT_OPSET, ExportInfo, export_engine
    from .runs import engine_from_run

    if quantize not in (None, "int8"):
        raise ArgumentError(f"`quantize` is int8 (or left out: fp32), not {quantize!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArgumentError(f"`out` {out} exists and is not an empty folder: choose another")
    folder = RunFolder(run)
    engine = engine_from_run(run)  # refuses a plain CNN or an uncalibrated run, saying what to do
    meta = folder.meta()
    info = ExportInfo(meta.data.mean, meta.data.std, meta.data.class_names, sha256_file(folder.weights), engine.profile)
    opset = DEFAULT_OPSET if opset is None else opset
    if quantize is None:
        return export_engine(engine, out, info, opset)
    from .runs.quantized import quantized_export

    return quantized_export(run, out, engine, info, opset)


@dataclass(frozen=True)
class ComparedRuns:
    """What :func:`compare_runs` made: a row per run and rule, and the chart's file (if asked for)."""

    rows: list[MethodRow]
    chart: Path | None


def compare_runs(
    runs: list[str | Path],
    rules: list[str] | None = None,
    chart: str | Path | None = None,
    *,
    fallback: str = "most_confident",
    device: str = "cpu",
    log: Log = None,
) -> ComparedRuns:
    """Several SDN runs of one data set side by side (e.g. sdn, mixed and ic-only on one backbone):
    each run's records (collected once, cached in the run), every rule's accuracy at 25/50/75/100 %
    of the CNN's cost chosen on validation, and the area under its test curve; ``chart`` an SVG
    file of every curve. Nothing but the records' cache and ``chart`` is written."""
    parsed = [ExitRule.parse(r) for r in (rules if rules is not None else ("max_softmax", "ztw"))]
    pick_device(str(device))
    chart_path = _check_chart(chart) if chart is not None else None
    named: list[RunRecords] = []
    names = [Path(run).name or str(run) for run in runs]
    names = [n if names.count(n) == 1 else str(run) for n, run in zip(names, runs)]  # two runs named alike: paths
    for run, name in zip(runs, names):
        folder = RunFolder(run)
        meta = folder.meta()
        if folder.kind() != "sdn":
            raise RunFolderError(f"{run} is a plain CNN run: compare SDN runs (ic-only, sdn or mixed)")
        recs = run_records(run, ("val", "test"), device=device, log=log)
        mode = meta.config.mode + (f" +distill {meta.recipe.distill:g}" if meta.recipe.distill else "")
        mode += " +cascade" if meta.model.cascade else ""
        named.append(RunRecords(name, mode, recs["val"], recs["test"]))
    rows = compare_methods(named, parsed, fallback)
    if chart_path is not None:
        from .report.figures import methods_svg

        write_bytes(chart_path, methods_svg(rows))
    return ComparedRuns(rows, chart_path)


def _check_chart(chart: str | Path) -> Path:
    """The chart's path, checked before anything is collected or written."""
    path = Path(chart)
    if path.suffix.lower() != ".svg":
        raise ArgumentError(f"`chart` {path} is an SVG file: name it *.svg")
    if path.is_dir() or path.is_symlink():
        raise ArgumentError(f"`chart` {path} is a folder or a link: name a new or existing SVG file")
    if not path.parent.is_dir():
        raise ArgumentError(f"`chart` {path}: its folder {path.parent} does not exist")
    return path
