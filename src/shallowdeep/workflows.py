"""What the commands do, composed from the layers below: analyze a run, explain it.

Knows run folders, analyses and the report; knows no command-line flag.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import analyze, backdoor_figures
from .core.errors import ArgumentError, RunFolderError
from .core.io import read_json
from .runs import RunFolder, backdoor_of, run_data, run_records, save_calibration
from .runs.weights import load

Log = Callable[[str], None] | None


def analyze_run(run: str | Path, out: str | Path | None = None, *, max_drop: float = 0.01,
                budget: float | None = None, fallback: str = "most_confident", device: str = "cpu",
                log: Log = None) -> tuple[Path, Path]:
    """Collect (or reuse) a run's records, analyze them, write the engine's ``calibration.json``
    (SDN runs) and the report (``report.html`` and ``report.json``); return the report's paths."""
    from . import report

    folder = RunFolder(run)
    meta = folder.meta()
    is_sdn = meta.get("model", {}).get("kind") == "sdn"
    out = Path(out) if out else folder.report
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    data = run_data(run)  # for the image grids and class names; the model loads only if a record is missing
    backdoor = backdoor_of(run)
    splits = ("train", "val", "test") + (("test+trigger",) if backdoor is not None else ())
    records = run_records(run, splits, data=data, device=device, log=log)
    t0 = time.perf_counter()
    analysis = analyze(records, max_drop=max_drop, budget=budget, fallback=fallback)
    if backdoor is not None:
        from dataclasses import replace

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
    figures = report.figures(analysis, test, data.test.images.numpy(), classes)
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
    page = report.render_html(analysis, figures, f"shallowdeep report: {folder.path.name}", meta_line, extra)
    if is_sdn:  # the engine's default threshold: chosen on the validation split, tied to these weights
        save_calibration(run, analysis.calibrated, str(test.meta.get("weights_sha256")))
    if out == folder.report:
        folder.subfolder(out)
        folder.write_json(out / "report.json", result)
        folder.write_bytes(out / "report.html", page.encode())
    else:
        from .core.io import write_bytes, write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", result)
        write_bytes(out / "report.html", page.encode())
    return out / "report.html", out / "report.json"


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
