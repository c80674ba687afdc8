"""What the commands do, composed from the layers below: analyze a run, explain it.

Knows run folders, analyses and the report; knows no command-line flag.
"""
from __future__ import annotations

import base64
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .analysis import analyze, backdoor_figures, rule_calibration
from .core.errors import ArgumentError, RunFolderError, UserError
from .core.io import read_json
from .data import reuse_loaded
from .devices import pick_device
from .runs import RunFolder, TrainConfig, backdoor_of, run_data, run_records, save_calibration
from .runs.weights import load

if TYPE_CHECKING:
    from .runs.precompile import Ahead

Log = Callable[[str], None] | None
# the splits an analysis collects records of (and, for a backdoored run, the triggered test split)
ANALYZED_SPLITS = ("train", "val", "test")


def analyze_run(run: str | Path, out: str | Path | None = None, *, max_drop: float = 0.01,
                budget: float | None = None, fallback: str = "most_confident", device: str = "cpu",
                rules: list[str] | None = None, rule: str = "max_softmax", thresholds: str = "auto",
                log: Log = None) -> tuple[Path, Path]:
    """Collect (or reuse) a run's records, analyze them, write the engine's ``calibration.json``
    (SDN runs) and the report (``report.html`` and ``report.json``); return the report's paths.

    ``thresholds``: ``"per_ic"`` (the engine gets one threshold per IC, chosen on validation),
    ``"single"`` (one threshold for every IC, the paper's) or ``"auto"`` (per-IC if cross-validation
    on the validation split says they beat the single threshold on held-out inputs)."""
    from . import report
    from .core.exits import check_fallback

    started = time.perf_counter()
    # every argument is checked before anything is collected or written
    check_fallback(fallback)
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 1):  # NaN fails too
        raise ArgumentError(f"`max_drop` is an accuracy drop in [0, 1], got {max_drop}")
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget < float("inf")):
        raise ArgumentError(f"`budget` is a cost relative to the CNN's and must be a positive number, got {budget}")
    if thresholds not in ("auto", "per_ic", "single"):
        raise ArgumentError(f"`thresholds` is auto, per_ic (one per IC) or single (one for all ICs), not {thresholds!r}")
    pick_device(str(device))  # a device that does not exist: one line now, not PyTorch's error mid-collection
    from .analysis import compare_rules

    options, chosen_rule, compared = _analysis_options(max_drop, budget, fallback, rules, rule, thresholds)
    folder = RunFolder(run)
    meta = folder.meta()
    is_sdn = meta.get("model", {}).get("kind") == "sdn"
    out = Path(out) if out else folder.report
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    # where the analysis's time went (report.json's time_parts): the data set, the records (collected
    # or read from the cache), the analyses, the figures and the page with what it embeds
    parts: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        parts[part] = now - clock
        clock = now

    data = run_data(run)  # for the image grids and class names; the model loads only if a record is missing
    backdoor = backdoor_of(run)
    splits = ANALYZED_SPLITS + (("test+trigger",) if backdoor is not None else ())
    from .distributed import current

    lap("data")
    records = run_records(run, splits, data=data, device=device, log=log)
    lap("records")
    if not current().main:  # under torchrun the other ranks helped collect; rank 0 analyzes and writes
        return out / "report.html", out / "report.json"
    if log is not None:
        log("analyzing the records and drawing the report")
    t0 = time.perf_counter()
    analysis = analyze(records, max_drop=max_drop, budget=budget, fallback=fallback)
    from dataclasses import replace

    if is_sdn:
        # the rules are compared at the max-drop operating point (a budget may be out of reach of patience)
        analysis = replace(analysis, rules=compare_rules(records["val"], records["test"], compared, max_drop=max_drop,
                                                         fallback=fallback))
    if backdoor is not None:
        analysis = replace(analysis, backdoor=backdoor_figures(
            records["test"], records["test+trigger"], backdoor.target, backdoor.to_json(),
            analysis.calibrated.threshold if is_sdn else None, fallback))
    seconds = time.perf_counter() - t0
    cfg = meta.get("config", {})
    test = records["test"]
    meta_line = (f"{cfg.get('arch')} trained in mode {cfg.get('mode')} on {cfg.get('data')}; {test.num_inputs} test, "
                 f"{records['val'].num_inputs} validation, {records['train'].num_inputs} training inputs; analyses took "
                 f"{seconds:.2f}s")
    classes = data.meta.get("class_names", data.classes)
    lap("analyses")
    figures = report.figures(analysis, test, _pictures(data.test.images), classes, meta.get("epochs"))
    lap("figures")
    result: dict[str, Any] = {"run": str(folder.path.resolve()), "arch": cfg.get("arch"), "data": cfg.get("data"),
                              "mode": cfg.get("mode"), "meta_line": meta_line, **analysis.to_json()}
    o = analysis.overthinking
    result["images"] = {
        "first_correct": {n: [int(test.ids[i]) for i in idx]
                          for n, idx in zip([r.output for r in analysis.outputs], o.examples_first_correct)},
        "only_first_ic": [int(test.ids[i]) for i in o.examples_only_first],
        "note": "test-split ids (positions in the data set's test split)",
    }
    extra = []
    if analysis.backdoor is not None:
        extra.append(report.backdoor_section(analysis.backdoor, [r.output for r in analysis.outputs], classes))
    explain_json, explain_png = folder.explain / "explain.json", folder.explain / "explanations.png"
    if explain_json.is_file() and explain_png.is_file():
        ex = read_json(explain_json)
        try:
            extra.append(report.explanations_section(int(ex["count_total"]), str(ex["split"]), len(ex["inputs"]),
                                                     base64.b64encode(explain_png.read_bytes()).decode()))
            result["explanations"] = ex
        except (KeyError, TypeError, ValueError):
            raise RunFolderError(f"{explain_json} is damaged: explain the run again") from None
    chosen = None
    if is_sdn:  # the engine's thresholds: chosen on the validation split, tied to these weights;
        # with a budget, the operating point asked for is the budget's (the max-drop one stays in the report)
        per_ic = {"auto": "auto", "per_ic": True, "single": False}[thresholds]
        temps = analysis.rules.temperatures if chosen_rule.temperature else None
        # max_softmax honours a budget; another rule is calibrated at the max-drop point (a budget may be out
        # of patience's reach)
        goal = {"budget": budget} if budget is not None and chosen_rule.label == "max_softmax" else {}
        chosen = rule_calibration(records["val"], records["test"], chosen_rule, np.asarray(temps) if temps else None,
                                  max_drop=max_drop, fallback=fallback, per_ic=per_ic, **goal)
        result["early_exit"]["engine"] = {"rule": chosen_rule.label, "thresholds": thresholds,
                                          "calibration": chosen.to_json()}
        lap("calibration")  # the engine's thresholds (per-IC ones are cross-validated)
    page = report.render_html(analysis, figures, f"shallowdeep report: {folder.path.name}", meta_line, extra,
                              run_meta=meta, classes=list(classes),
                              engine=(chosen_rule.label, chosen) if chosen is not None else None)
    if is_sdn:
        save_calibration(run, chosen, str(test.meta.get("weights_sha256")), chosen_rule.to_json(), temps)
    lap("page")  # the HTML (figures embedded), the engine's calibration.json
    # what this report was made from and with, so a reproduction run again can keep it
    result |= {"weights_sha256": meta.get("weights_sha256"), "options": options,
               "wall_seconds": time.perf_counter() - started, "time_parts": parts}
    if out == folder.report:
        folder.subfolder(out)
        folder.write_json(out / "report.json", result)
        folder.write_bytes(out / "report.html", page.encode())
    else:
        from .core.io import write_bytes, write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", result)
        write_bytes(out / "report.html", page.encode())
    if log is not None:
        log(f"analyzed in {result['wall_seconds']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + ")")
    return out / "report.html", out / "report.json"


# analyze_run's own defaults: what `reproduce` analyzes with, read from one place
_ANALYZE_DEFAULTS = {k: p.default for k, p in inspect.signature(analyze_run).parameters.items()}


def _analysis_options(max_drop: float, budget: float | None, fallback: str, rules: list[str] | None, rule: str,
                      thresholds: str) -> tuple[dict[str, Any], Any, list[Any]]:
    """The analysis options as recorded in report.json, the rule predict uses and the rules compared
    (that one always among them)."""
    from .analysis import DEFAULT_RULES, parse_rule

    chosen_rule = parse_rule(rule)
    compared = [parse_rule(r) for r in (rules if rules is not None else DEFAULT_RULES)]
    if chosen_rule.label not in [r.label for r in compared]:
        compared.append(chosen_rule)
    options = {"max_drop": max_drop, "budget": budget, "fallback": fallback, "rules": [r.label for r in compared],
               "rule": chosen_rule.label, "thresholds": thresholds}
    return options, chosen_rule, compared


def _kept_analysis(run: str | Path) -> Path | None:
    """The run's report.json if it is an analysis with the default options of these very weights
    (and the engine's calibration is there), else ``None``: analyzing again would give the same."""
    folder = RunFolder(run)
    path = folder.report / "report.json"
    if not (path.is_file() and folder.calibration.is_file()):
        return None
    try:
        rep, weights = read_json(path), folder.meta().get("weights_sha256")
    except UserError:
        return None  # damaged: analyze again
    d = _ANALYZE_DEFAULTS
    defaults = _analysis_options(d["max_drop"], d["budget"], d["fallback"], d["rules"], d["rule"], d["thresholds"])[0]
    if not (isinstance(rep, dict) and weights and rep.get("weights_sha256") == weights and rep.get("options") == defaults
            and isinstance(rep.get("wall_seconds"), (int, float))):
        return None
    return path


def explain_run(run: str | Path, split: str = "test", limit: int = 8, device: str = "cpu",
                log: Log = None) -> dict[str, Any]:
    """Explain a run's IC-1-right/final-wrong inputs; write PNG grids and ``explain.json`` into the
    run's ``explain/`` folder, where the report finds them."""
    from . import report
    from .data import normalize
    from .explain import PANEL_TITLES, disagreements, explain_output, explanation_panels, require_grad_cam

    folder = RunFolder(run)
    if folder.kind() != "sdn":
        raise RunFolderError(f"{run} is a plain CNN run: explanations compare IC 1 with the final output; make it an "
                             "SDN by ic-only training first")
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
    names = list(data.meta.get("class_names", data.classes))
    result: dict[str, Any] = {"split": split, "count_total": int((record.correct[:, 0] & ~record.correct[:, -1]).sum()),
                              "inputs": [], "files": []}
    if len(pick):
        s = data.split(split)
        x = normalize(s.images[pick], data.mean, data.std).contiguous().to(device)
        first = explain_output(model, x, 0, record.preds[pick, 0])
        final = explain_output(model, x, model.num_outputs - 1, record.preds[pick, -1])
        panels = explanation_panels(s.images[pick].numpy(), first, final)
        labels = [f"true {names[record.labels[i]]}\nIC 1: {names[record.preds[i, 0]]}\nfinal: {names[record.preds[i, -1]]}"
                  for i in pick]
        folder.write_bytes(out / "explanations.png", report.explanation_grid(panels, PANEL_TITLES, labels))
        result["files"].append("explanations.png")
        for j, i in enumerate(pick):
            name = f"input_{int(record.ids[i])}.png"
            folder.write_bytes(out / name, report.explanation_grid(panels[j:j + 1], PANEL_TITLES, labels[j:j + 1]))
            result["files"].append(name)
            result["inputs"].append({"id": int(record.ids[i]), "true": names[record.labels[i]],
                                     "ic1": names[record.preds[i, 0]], "final": names[record.preds[i, -1]],
                                     "ic1_cam_mean": float(np.mean(first.cam[j])),
                                     "final_cam_mean": float(np.mean(final.cam[j])), "file": name})
    folder.write_json(out / "explain.json", result)
    return result | {"folder": str(out)}


# --------------------------------------------------------------------------------------------------
# the paper's pipeline, end to end

PAPER_EPOCHS = {"cnn": 100, "ic-only": 25, "sdn": 100}
STAGES = tuple(PAPER_EPOCHS)  # in the order they run
# what the paper claims (spec sections 7-9), printed beside the measured figures
PAPER_CLAIMS = {
    "early_exit": "average cost down by more than 50 % on CIFAR-10 and CIFAR-100 (about 25 % on Tiny ImageNet) "
                  "with accuracy within a point of the final output",
    "early_share": "up to about 95 % of inputs are right at some output before the final one",
    "destructive_share": "about 50 % of the final output's errors are right at some IC",
    "confusion": "confusion separates errors from correct answers better than the final output's confidence",
}


def _stage(out: Path, cfg: dict[str, Any], log: Log, progress: bool, set_up: Callable[[], None] | None = None,
           compile_ready: Callable[[], bool] | None = None) -> tuple[float, float, dict[str, Any] | None]:
    """Train one stage into ``out`` unless it is finished: a new run, or a resumed one. Returns the
    stage's wall seconds over every call (a run written before they were recorded: its epochs' sum),
    the sum of its epochs' times (training and validation only), resumed epochs included, and how
    it trained (run.json's ``runtime``).
    ``set_up`` and ``compile_ready`` go to :func:`~shallowdeep.runs.train_run`."""
    from .runs import train_run

    folder = RunFolder(out)
    hooks = {"progress": progress, "log": log, "set_up": set_up, "compile_ready": compile_ready}
    if folder.exists():
        meta = folder.meta()
        if meta.get("status") != "complete":
            train_run(TrainConfig(out=str(out), resume=True, device=cfg.get("device"), precision=cfg.get("precision"),
                                  compile=cfg.get("compile")), **hooks)
        elif log is not None:
            log(f"{out} is finished: kept")
    else:
        train_run(TrainConfig(out=str(out), **cfg), **hooks)
    meta = folder.meta()
    epochs = float(sum(e["seconds"] for e in meta.get("epochs", [])))
    return float(meta.get("wall_seconds", epochs)), epochs, meta.get("runtime")


@reuse_loaded()  # every stage and analysis of one call reads the same data set: listed and read once
def reproduce(data: str, out: str | Path, archs: list[str], *, data_root: str | None = None,
              image_size: int | None = None, epochs: dict[str, int] | None = None, device: str | None = None,
              precision: str | None = None, compile: bool | None = None, seed: int | None = None,
              stages: tuple[str, ...] = STAGES, log: Log = print, progress: bool = True) -> dict[str, Any]:
    """The paper's pipeline per architecture: CNN, IC-only SDN from it, SDN from scratch, both SDNs
    analyzed (thresholds calibrated on validation); then one table as ``reproduction.md``,
    ``reproduction.json`` and ``index.html`` (linking every report) in ``out``. Every stage is its own
    run folder, so a killed reproduction resumes where it stopped. ``stages`` runs part of it (e.g.
    only ``("sdn",)`` when time is short); a later call with every stage keeps the finished ones."""
    from . import report
    from .models import list_archs

    started = time.perf_counter()
    if not archs:
        raise ArgumentError("`archs` names no architecture: give at least one")
    for a in archs:
        if a not in list_archs():
            raise ArgumentError(f"unknown architecture {a!r} in `archs`: choose from {', '.join(list_archs())}")
    unknown = [x for x in stages if x not in STAGES]
    if unknown or not stages:
        raise ArgumentError(f"unknown or no stage in `stages` ({', '.join(unknown) or 'none given'}): "
                            f"choose from {', '.join(STAGES)}")
    epochs = {**PAPER_EPOCHS, **(epochs or {})}
    for stage, n in epochs.items():
        if not (isinstance(n, int) and n >= 1):
            raise ArgumentError(f"the {stage} stage needs at least one epoch, got {n}")
    from .data import parse_data_name

    parse_data_name(data)  # an unknown data set is refused before any folder is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    if "ic-only" in stages and "cnn" not in stages:
        for a in archs:
            if not RunFolder(out / a / "cnn").finished():
                raise ArgumentError(f"the ic-only stage needs a finished CNN in {out / a / 'cnn'}: "
                                    "add the cnn stage to `stages`")
    from .distributed import join

    # under torchrun every rank trains and collects its shard of each stage; rank 0 analyzes and writes
    place, dev = join(str(pick_device(device)))
    if not place.main:
        log, progress = None, False
    out.mkdir(parents=True, exist_ok=True)
    from .core.io import write_bytes, write_json

    result: dict[str, Any] = {"data": data, "device": dev, "epochs": epochs, "rows": [], "paper_claims": PAPER_CLAIMS,
                              "note": "thresholds chosen on the validation split, reported on the test split"}

    def publish() -> None:  # after every analysis, so a killed reproduction still leaves its table so far
        result["call_seconds"] = time.perf_counter() - started
        write_json(out / "reproduction.json", result)
        write_bytes(out / "reproduction.md", report.reproduction_markdown(result).encode())
        write_bytes(out / "index.html", report.reproduction_html(result).encode())

    # the stages this call trains anew get their steps compiled in a background process, in training
    # order, and each trains eagerly until its step is in the compiler's cache (one process on one
    # GPU; under torchrun no stage compiles by default)
    common_cfg = {"data": data, "data_root": data_root, "image_size": image_size, "device": device,
                  "precision": precision, "compile": compile, "seed": seed}
    beside = _CompiledBeside([] if place.enabled or not _compiles_beside(dev) else
                             _compile_ahead_plan(out, archs, stages, epochs, common_cfg), log)

    try:
        for arch in archs:
            common = {"arch": arch, **common_cfg}
            one = _ArchStages(out, arch, dev, place.main, beside, result["rows"], publish, log, progress)
            # the IC-only SDN is analyzed before the SDN from scratch trains: the paper's central results
            # (overthinking, early exits of a trained CNN) exist even if the last stage is cut short
            if "cnn" in stages:
                one.train("cnn", {**common, "mode": "cnn", "epochs": epochs["cnn"]})
            if "ic-only" in stages:
                one.train("ic-only", {"mode": "ic-only", "from_run": str(out / arch / "cnn"), "seed": seed,
                                      "epochs": epochs["ic-only"], "device": device, "precision": precision,
                                      "compile": compile})
                one.analyze("ic-only", beside_next=_analysis_beside("sdn" in stages, out / arch / "sdn", dev,
                                                                    place.enabled))
            if "sdn" in stages:
                try:
                    one.train("sdn", {**common, "mode": "sdn", "epochs": epochs["sdn"]})
                except BaseException:  # the analysis beside it finishes its report; the stage's error goes on
                    one.wait_background()
                    raise
                one.finish_background()
                one.analyze("sdn")
    finally:
        compiled = beside.finish()
        if compiled is not None:
            result["compiled_ahead"] = compiled
    if place.main:
        publish()
    if log is not None:
        log(report.reproduction_markdown(result))
    return result


class _ArchStages:
    """One architecture's stages in a reproduction: trains each (or keeps it, finished), analyzes it
    here or in a background process beside the next stage, and adds its row to the table with the wall
    time of every stage and analysis so far (the rows of one architecture share these dicts, filled
    in as its stages finish)."""

    def __init__(self, out: Path, arch: str, dev: str, main: bool, beside: _CompiledBeside,
                 rows: list[dict[str, Any]], publish: Callable[[], None], log: Log, progress: bool) -> None:
        self.out, self.base, self.arch, self.dev, self.main = out, out / arch, arch, dev, main
        self.beside, self.rows, self.publish, self.log, self.progress = beside, rows, publish, log, progress
        self.seconds: dict[str, float] = {}  # wall seconds per stage and analysis (an analysis: the pipeline's part)
        self.in_epochs: dict[str, float] = {}  # training stages: the part spent in epochs
        self.in_background: dict[str, float] = {}  # analyses run beside a stage: their own wall time
        self.runtimes: dict[str, Any] = {}  # how each training stage ran (run.json's runtime)
        self.pending: list[tuple[str, float, Any]] = []  # (kind, seconds spent here, analysis process)

    def train(self, kind: str, cfg: dict[str, Any]) -> None:
        """Train stage ``kind`` (see :func:`_stage`), its step compiled beside it if planned."""
        self.seconds[kind], self.in_epochs[kind], self.runtimes[kind] = _stage(
            self.base / kind, cfg, self.log, self.progress, self.beside.start, self.beside.ready(f"{self.arch}/{kind}"))

    def analyze(self, kind: str, beside_next: bool = False) -> None:
        """Analyze stage ``kind``: keep an analysis of these weights, else analyze it here, or, with
        ``beside_next``, start a background process for it (:meth:`finish_background` adds its row)."""
        run, t0 = self.base / kind, time.perf_counter()
        json_path = _kept_analysis(run)  # every rank sees the same files: all take one branch
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
            _, json_path = analyze_run(run, device=self.dev, log=self.log)
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
            why = _last_words(process, status)
            json_path = _kept_analysis(self.base / kind) if status == 0 else None
            if json_path is None:
                if self.log is not None:
                    self.log(f"the background analysis of {self.base / kind} failed ({why}): analyzing it here")
                _, json_path = analyze_run(self.base / kind, device=self.dev, log=self.log)
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
        epoch_s = sorted(e["seconds"] for e in meta.get("epochs", []))
        row = _reproduction_row(self.arch, kind, read_json(json_path), meta, epoch_s, json_path.parent / "report.html",
                                self.out)
        row |= {"stage_seconds": self.seconds, "stage_epoch_seconds": self.in_epochs,
                "stage_background_seconds": self.in_background, "stage_runtime": self.runtimes}
        self.rows.append(row)
        self.publish()


# device types on which an analysis runs in a background process beside the next stage: there the
# stage keeps the GPU busy and leaves the CPU's cores idle; on a CPU both would want the same cores
ANALYSIS_BESIDE_ON = ("cuda",)


def _analysis_beside(next_trains: bool, next_stage: Path, dev: str, distributed: bool) -> bool:
    """Whether to analyze a stage in the background: the next stage trains in this call, on a device
    of :data:`ANALYSIS_BESIDE_ON`, in one process (under torchrun every rank collects its shard)."""
    if not next_trains or distributed or dev.split(":")[0] not in ANALYSIS_BESIDE_ON:
        return False
    return not RunFolder(next_stage).finished()


def _analysis_process(run: Path, pipeline_seconds: float, device: str) -> Any:
    """A child process running :func:`_analyze_beside` on ``run``; its exit status says whether it
    worked, and what it wrote to stderr (kept in a temporary file, ``process.said``) why not."""
    import subprocess
    import tempfile

    from .core.children import python_child

    said = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads while it runs, and a pipe fills up
    process = python_child(["-c", "import sys; from shallowdeep.workflows import _analyze_beside; "
                                  "_analyze_beside(sys.argv[1], float(sys.argv[2]), sys.argv[3])", str(run),
                            repr(pipeline_seconds), device], stdout=subprocess.DEVNULL, stderr=said)
    process.said = said
    return process


def _last_words(process: Any, status: int) -> str:
    """The last line a finished :func:`_analysis_process` wrote to stderr (its error), or its exit status."""
    with process.said as said:
        said.seek(0)
        lines = [line.strip() for line in said.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit status {status}"


def _analyze_beside(run: str | Path, pipeline_seconds: float, device: str = "cpu") -> Path:
    """:func:`analyze_run` with the defaults a reproduction uses, its records collected on ``device``,
    as a reproduction's background process runs it; ``report.json`` also records
    ``pipeline_seconds``, what the pipeline spent on this analysis itself (starting it), so that a
    later call keeping this analysis counts that part, not the background time, in the table's total."""
    _, json_path = analyze_run(run, device=device)
    rep = read_json(json_path)
    rep["pipeline_seconds"] = float(pipeline_seconds)
    RunFolder(run).write_json(json_path, rep)
    return json_path


# device types on which a run's step compiles in a background process while the run trains: there
# the training loop needs one core (the GPU does the work) and the compiler gets the others; on a CPU
# the training takes every core, and a compiled run compiles in its own process before its first step
COMPILE_BESIDE_ON = ("cuda",)


def _compiles_beside(dev: str) -> bool:
    return dev.split(":")[0] in COMPILE_BESIDE_ON


class _CompiledBeside:
    """Runs' training steps compiled by one background process (:mod:`~shallowdeep.runs.precompile`)
    while this process trains them: ``plan`` is ``(name, TrainConfig)`` per run, in training order."""

    def __init__(self, plan: list[tuple[str, TrainConfig]], log: Log) -> None:
        self.plan, self.log = plan, log
        self.ahead: Ahead | None = None  # the running child, once started

    def start(self) -> None:
        """Start the child, once: when the first run is set up, so its data is in the decode cache
        (which the child reads instead of decoding beside it) and, on CUDA, this process holds its
        context (a GPU in exclusive-process mode then refuses the child, whose runs compile for
        themselves)."""
        if self.ahead is not None or not self.plan:
            return
        from .runs.precompile import start

        self.ahead = start([cfg for _, cfg in self.plan])
        if self.ahead is not None and self.log is not None:
            self.log(f"compiling the training steps in a background process: {', '.join(n for n, _ in self.plan)}")

    def ready(self, name: str) -> Callable[[], bool] | None:
        """The planned run's ``compile_ready`` (``None`` for a run not planned: it compiles for itself,
        if at all): yes once the child compiled its step, failed at it, or is not running."""
        names = [n for n, _ in self.plan]
        if name not in names:
            return None
        i = names.index(name)
        return lambda: self.ahead is None or self.ahead.done(i)

    def finish(self) -> list[dict[str, Any]] | None:
        """Stop the child; per planned run what it did and how many epochs the run trained eagerly
        meanwhile (``None`` if it never started)."""
        if self.ahead is None:
            return None
        rows = [{"stage": name} | row | {"eager_epochs": _eager_epochs(Path(cfg.out))}
                for (name, cfg), row in zip(self.plan, self.ahead.finish())]
        if self.log is not None:
            self.log("compiled in the background: " + "; ".join(
                f"{r['stage']} {'yes' if r['compiled'] else 'no'}" + (f" ({r['error']})" if r.get("error") else "")
                for r in rows))
        return rows


def train(cfg: TrainConfig, *, progress: bool = True, log: Log = print) -> Path:
    """Train a run like :func:`~shallowdeep.runs.train_run`; a new run that compiles (by default on one
    GPU) has its step compiled by a background process while it trains its first epochs eagerly,
    instead of waiting for the compiler (not under torchrun, not for a resumed run)."""
    from .distributed import from_env
    from .runs import train_run
    from .runs.train import may_compile

    new = not from_env().enabled and _compiles_beside(str(pick_device(cfg.device))) and \
        not RunFolder(cfg.out).exists() and may_compile(cfg)
    beside = _CompiledBeside([(str(cfg.out), cfg)] if new else [], log)
    try:
        return train_run(cfg, progress=progress, log=log, set_up=beside.start, compile_ready=beside.ready(str(cfg.out)))
    finally:
        beside.finish()


def _eager_epochs(run: Path) -> int:
    """How many epochs a compiled run trained eagerly while its step compiled elsewhere."""
    folder = RunFolder(run)
    try:
        return sum(1 for e in folder.meta().get("epochs", []) if e.get("eager")) if folder.exists() else 0
    except UserError:  # a damaged run.json: said by whatever reads it next, not by this count
        return 0


def _compile_ahead_plan(out: Path, archs: list[str], stages: tuple[str, ...], epochs: dict[str, int],
                        common: dict[str, Any]) -> list[tuple[str, Any]]:
    """The stages to compile in the background, in the order this call trains them, each as
    ``(name, TrainConfig)``: every stage it trains as a new run that would compile. A stage resumed
    keeps its recorded settings and is not planned. An ic-only stage names its arch and data (its CNN
    run may not exist yet)."""
    from .runs.train import may_compile

    plan = []
    for arch in archs:
        for kind in ("cnn", "ic-only", "sdn"):
            folder = RunFolder(out / arch / kind)
            if kind in stages and not folder.exists():  # trained anew in this call
                cfg = TrainConfig(out=str(folder.path), mode=kind, arch=arch, epochs=epochs[kind], **common)
                if may_compile(cfg):
                    plan.append((f"{arch}/{kind}", cfg))
    return plan


def _reproduction_row(arch: str, kind: str, r: dict[str, Any], meta: dict[str, Any], epoch_s: list[float],
                      html_path: Path, out: Path) -> dict[str, Any]:
    ee = r["early_exit"]
    cal, ref = ee["calibrated"], ee["reference_protocol"]
    ref_row = next((x for x in ref["rows"] if x["threshold"] == ref["chosen_threshold"]), None)
    o, c = r["overthinking"], r["confusion"]
    return {
        "arch": arch, "kind": kind,
        "outputs": [{"output": x["output"], "relative_cost": x["relative_cost"], "test_accuracy": x["test_accuracy"]}
                    for x in r["outputs"]],
        "final_test_accuracy": r["outputs"][-1]["test_accuracy"],
        "calibrated": {"threshold": cal["threshold"], "test_accuracy": cal["test"]["accuracy"],
                       "test_relative_cost": cal["test"]["relative_cost"]},
        "engine": _engine_point(ee.get("engine")),
        "reference_protocol": {"threshold": ref["chosen_threshold"],
                               "test_accuracy": ref_row["accuracy"] if ref_row else None,
                               "test_relative_cost": ref_row["relative_cost"] if ref_row else None},
        "early_share": o["early_share"],
        "destructive_share": o["destructive"]["union_share_of_final_errors"],
        "confusion_auroc": c["confusion"]["auroc"], "confidence_auroc": c["confidence"]["auroc"],
        "epochs": len(epoch_s), "median_epoch_seconds": epoch_s[len(epoch_s) // 2] if epoch_s else None,
        "runtime": meta.get("runtime"),
        "report": str(html_path.relative_to(out)) if html_path.is_relative_to(out) else str(html_path),
    }


def _engine_point(engine: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``predict`` uses after the analysis: one threshold or per-IC ones, and their test point."""
    if not engine:
        return None
    cal = engine["calibration"]
    return {"rule": engine["rule"], "per_ic": cal.get("thresholds") is not None,
            "thresholds": cal.get("thresholds") or [cal["threshold"]],
            "test_accuracy": cal["test"]["accuracy"], "test_relative_cost": cal["test"]["relative_cost"]}


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


def export_run(run: str | Path, out: str | Path, opset: int | None = None) -> Path:
    """Export a calibrated SDN run as ONNX stages + ``manifest.json`` (see :mod:`shallowdeep.export`)."""
    from .core.io import sha256_file
    from .export import DEFAULT_OPSET, export_engine
    from .runs import engine_from_run

    folder = RunFolder(run)
    engine = engine_from_run(run)  # refuses a plain CNN or an uncalibrated run, saying what to do
    meta = folder.meta()
    d = meta.get("data", {})
    info = {"mean": d.get("mean", [0.0, 0.0, 0.0]), "std": d.get("std", [1.0, 1.0, 1.0]),
            "classes": d.get("class_names") or d.get("classes"), "weights_sha256": sha256_file(folder.weights)}
    return export_engine(engine, out, info, DEFAULT_OPSET if opset is None else opset)
