"""What the commands do, composed from the layers below: train a run (its step compiled beside it),
analyze it, explain it, export it. The paper's whole pipeline is :mod:`~shallowdeep.reproduction`.

Knows run folders, analyses and the report; knows no command-line flag.
"""

from __future__ import annotations

import base64
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import analyze, backdoor_figures, rule_calibration
from .core.errors import ArgumentError, RunFolderError, UserError
from .core.io import read_json
from .devices import pick_device
from .runs import RunFolder, TrainConfig, backdoor_of, run_data, run_records, save_calibration
from .runs.precompile import CompiledBeside, compiles_beside
from .runs.weights import load

Log = Callable[[str], None] | None
# the splits an analysis collects records of (and, for a backdoored run, the triggered test split)
ANALYZED_SPLITS = ("train", "val", "test")


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
) -> tuple[Path, Path]:
    """Collect (or reuse) a run's records, analyze them, write the engine's ``calibration.json``
    (SDN runs) and the report (``report.html`` and ``report.json``); return the report's paths.

    ``thresholds``: ``"per_ic"`` (the engine gets one threshold per IC, chosen on validation),
    ``"single"`` (one threshold for every IC, the paper's) or ``"auto"`` (per-IC if cross-validation
    on the validation split says they beat the single threshold on held-out inputs)."""
    from . import report
    from .core.exit_rule import check_fallback

    started = time.perf_counter()
    # every argument is checked before anything is collected or written
    check_fallback(fallback)
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 1):  # NaN fails too
        raise ArgumentError(f"`max_drop` is an accuracy drop in [0, 1], got {max_drop}")
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget < float("inf")):
        raise ArgumentError(f"`budget` is a cost relative to the CNN's and must be a positive number, got {budget}")
    if thresholds not in ("auto", "per_ic", "single"):
        raise ArgumentError(
            f"`thresholds` is auto, per_ic (one per IC) or single (one for all ICs), not {thresholds!r}"
        )
    pick_device(str(device))  # a device that does not exist: one line now, not PyTorch's error mid-collection
    from .analysis import compare_rules

    options, chosen_rule, compared = _analysis_options(max_drop, budget, fallback, rules, rule, thresholds)
    folder = RunFolder(run)
    meta = folder.meta()
    is_sdn = meta.model.kind == "sdn"
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
    analysis = analyze(records, max_drop=max_drop, budget=budget, fallback=fallback)
    from dataclasses import replace

    if is_sdn:
        # the rules are compared at the max-drop operating point (a budget may be out of reach of patience)
        analysis = replace(
            analysis,
            rules=compare_rules(records["val"], records["test"], compared, max_drop=max_drop, fallback=fallback),
        )
    if backdoor is not None:
        analysis = replace(
            analysis,
            backdoor=backdoor_figures(
                records["test"],
                records["test+trigger"],
                backdoor.target,
                backdoor.to_json(),
                analysis.calibrated.threshold if is_sdn else None,
                fallback,
            ),
        )
    lap("analyses")
    cfg = meta.config
    test = records["test"]
    meta_line = (
        f"{cfg.arch} trained in mode {cfg.mode} on {cfg.data}; {test.num_inputs} test, "
        f"{records['val'].num_inputs} validation, {records['train'].num_inputs} training inputs; analyses took "
        f"{parts['analyses']:.2f}s"
    )
    classes = data.meta.get("class_names", data.classes)
    figures = report.figures(analysis, test, _pictures(data.test.images), classes, meta.epochs)
    lap("figures")
    result: dict[str, Any] = {
        "run": str(folder.path.resolve()),
        "arch": cfg.arch,
        "data": cfg.data,
        "mode": cfg.mode,
        "meta_line": meta_line,
        **analysis.to_json(),
    }
    o = analysis.overthinking
    result["images"] = {
        "first_correct": {
            n: [int(test.ids[i]) for i in idx]
            for n, idx in zip([r.output for r in analysis.outputs], o.examples_first_correct)
        },
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
            extra.append(
                report.explanations_section(
                    int(ex["count_total"]),
                    str(ex["split"]),
                    len(ex["inputs"]),
                    base64.b64encode(explain_png.read_bytes()).decode(),
                )
            )
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
        chosen = rule_calibration(
            records["val"],
            records["test"],
            chosen_rule,
            np.asarray(temps) if temps else None,
            max_drop=max_drop,
            fallback=fallback,
            per_ic=per_ic,
            **goal,
        )
        result["early_exit"]["engine"] = {
            "rule": chosen_rule.label,
            "thresholds": thresholds,
            "calibration": chosen.to_json(),
        }
        lap("calibration")  # the engine's thresholds (per-IC ones are cross-validated)
    page = report.render_html(
        analysis,
        figures,
        f"shallowdeep report: {folder.path.name}",
        meta_line,
        extra,
        run_meta=meta,
        classes=list(classes),
        engine=(chosen_rule.label, chosen) if chosen is not None else None,
    )
    if is_sdn:
        engine_rule = chosen_rule.calibrated(chosen.exit_thresholds, temps, fallback)
        save_calibration(run, chosen, str(test.meta.get("weights_sha256")), engine_rule)
    lap("page")  # the HTML (figures embedded), the engine's calibration.json
    # what this report was made from and with, so a reproduction run again can keep it
    result |= {
        "weights_sha256": meta.weights_sha256,
        "options": options,
        "wall_seconds": time.perf_counter() - started,
        "time_parts": parts,
    }
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
        log(
            f"analyzed in {result['wall_seconds']:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
            + ")"
        )
    return out / "report.html", out / "report.json"


# analyze_run's own defaults: what `reproduce` analyzes with, read from one place
_ANALYZE_DEFAULTS = {k: p.default for k, p in inspect.signature(analyze_run).parameters.items()}


def _analysis_options(
    max_drop: float, budget: float | None, fallback: str, rules: list[str] | None, rule: str, thresholds: str
) -> tuple[dict[str, Any], Any, list[Any]]:
    """The analysis options as recorded in report.json, the rule predict uses and the rules compared
    (that one always among them)."""
    from .analysis import DEFAULT_RULES
    from .core.exit_rule import ExitRule

    chosen_rule = ExitRule.parse(rule)
    compared = [ExitRule.parse(r) for r in (rules if rules is not None else DEFAULT_RULES)]
    if chosen_rule.label not in [r.label for r in compared]:
        compared.append(chosen_rule)
    options = {
        "max_drop": max_drop,
        "budget": budget,
        "fallback": fallback,
        "rules": [r.label for r in compared],
        "rule": chosen_rule.label,
        "thresholds": thresholds,
    }
    return options, chosen_rule, compared


def kept_analysis(run: str | Path) -> Path | None:
    """The run's report.json if it is an analysis with the default options of these very weights
    (and the engine's calibration is there), else ``None``: analyzing again would give the same."""
    folder = RunFolder(run)
    path = folder.report / "report.json"
    if not (path.is_file() and folder.calibration.is_file()):
        return None
    try:
        rep, weights = read_json(path), folder.meta().weights_sha256
    except UserError:
        return None  # damaged: analyze again
    d = _ANALYZE_DEFAULTS
    defaults = _analysis_options(d["max_drop"], d["budget"], d["fallback"], d["rules"], d["rule"], d["thresholds"])[0]
    if not (
        isinstance(rep, dict)
        and weights
        and rep.get("weights_sha256") == weights
        and rep.get("options") == defaults
        and isinstance(rep.get("wall_seconds"), (int, float))
    ):
        return None
    return path


def explain_run(
    run: str | Path, split: str = "test", limit: int = 8, device: str = "cpu", log: Log = None
) -> dict[str, Any]:
    """Explain a run's IC-1-right/final-wrong inputs; write PNG grids and ``explain.json`` into the
    run's ``explain/`` folder, where the report finds them."""
    from . import report
    from .data import normalize
    from .explain import PANEL_TITLES, disagreements, explain_output, explanation_panels, require_grad_cam

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
    names = list(data.meta.get("class_names", data.classes))
    result: dict[str, Any] = {
        "split": split,
        "count_total": int((record.correct[:, 0] & ~record.correct[:, -1]).sum()),
        "inputs": [],
        "files": [],
    }
    if len(pick):
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
    folder.write_json(out / "explain.json", result)
    return result | {"folder": str(out)}


def train(cfg: TrainConfig, *, progress: bool = True, log: Log = print) -> Path:
    """Train a run like :func:`~shallowdeep.runs.train_run`; a new run that compiles (by default on one
    GPU) has its step compiled by a background process while it trains its first epochs eagerly,
    instead of waiting for the compiler (not under torchrun, not for a resumed run)."""
    from .distributed import from_env
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
        return train_run(cfg, progress=progress, log=log, set_up=beside.start, compile_ready=beside.ready(str(cfg.out)))
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


def export_run(run: str | Path, out: str | Path, opset: int | None = None) -> Path:
    """Export a calibrated SDN run as ONNX stages + ``manifest.json`` (see :mod:`shallowdeep.export`)."""
    from .core.io import sha256_file
    from .export import DEFAULT_OPSET, export_engine
    from .runs import engine_from_run

    folder = RunFolder(run)
    engine = engine_from_run(run)  # refuses a plain CNN or an uncalibrated run, saying what to do
    meta = folder.meta()
    info = {
        "mean": list(meta.data.mean),
        "std": list(meta.data.std),
        "classes": meta.data.class_names,
        "weights_sha256": sha256_file(folder.weights),
    }
    return export_engine(engine, out, info, DEFAULT_OPSET if opset is None else opset)
