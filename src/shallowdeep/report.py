"""``shallowdeep analyze``: every analysis of a run in one self-contained HTML report plus a JSON.

The HTML embeds its figures as base64 PNGs and links nothing outside itself, so it opens offline
and can be mailed as one file. The JSON holds every number the figures show.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import calibrate, confusion, overthinking, sweep
from .analysis.early_exit import reference_protocol
from .errors import UserError
from .record import ExitRecord, load_run_data, run_records
from .sdn import output_names

# --------------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _png(fig) -> str:
    return base64.b64encode(png_bytes(fig)).decode()


def fig_accuracy_cost(curves: dict[str, dict], per_output: list[dict], calibrated: dict, reference: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for split, style in (("val", "--"), ("test", "-")):
        c = curves[split]
        ax.plot(c["relative_cost"], np.asarray(c["accuracy"]) * 100, style, lw=1.4,
                label=f"early exits, {split} ({len(c['thresholds'])} thresholds)")
    xs = [o["relative_cost"] for o in per_output]
    ys = [o["test_accuracy"] * 100 for o in per_output]
    ax.scatter(xs, ys, c="k", s=18, zorder=3, label="each output alone (test)")
    for o, x, y in zip(per_output, xs, ys):
        ax.annotate(o["output"], (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.scatter([1.0], [per_output[-1]["test_accuracy"] * 100], marker="s", s=50, c="tab:red", zorder=4,
               label="plain CNN (cost 1)")
    t = calibrated["test"]
    ax.scatter([t["relative_cost"]], [t["accuracy"] * 100], marker="*", s=160, c="tab:green", zorder=5,
               label=f"calibrated on val: q={calibrated['threshold']:.4g} (test)")
    rows = reference["rows"]
    ax.scatter([r["relative_cost"] for r in rows], [r["accuracy"] * 100 for r in rows], marker="x", s=22,
               c="tab:gray", zorder=3, label="reference's 11 thresholds (test)")
    ax.set_xlabel("average cost / plain CNN cost")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def fig_overthinking(o: dict) -> str:
    plt = _plt()
    k = o["num_outputs"]
    names = output_names(k)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    w = 0.27
    ax.bar(x - w, o["correct"], w, label="correct")
    ax.bar(x, o["cumulative_correct"], w, label="correct at this or an earlier output")
    ax.bar(x + w, o["newly_correct"], w, label="first correct here")
    ax.set_xticks(x, names)
    ax.set_ylabel("test inputs")
    ax.set_title(f"wasteful overthinking: {100 * o['early_share']:.1f}% of inputs are right at some IC", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def fig_destructive(o: dict) -> str:
    plt = _plt()
    per = o["destructive"]["per_ic"]
    names = output_names(o["num_outputs"])[:-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    a1.bar(names, [p["count"] for p in per], color="tab:red")
    a1.set_title("IC right, final wrong (destructive)", fontsize=9)
    a1.set_ylabel("test inputs")
    x = np.arange(len(per))
    a2.bar(x - 0.2, [p["mean_confidence_destructive"] or 0 for p in per], 0.4, label="on destructive inputs", color="tab:red")
    a2.bar(x + 0.2, [p["mean_confidence_correct"] or 0 for p in per], 0.4, label="on all its correct inputs", color="tab:blue")
    a2.set_xticks(x, names)
    a2.set_ylim(0, 1)
    a2.set_title("mean IC confidence", fontsize=9)
    a2.legend(fontsize=7)
    for a in (a1, a2):
        a.grid(axis="y", alpha=0.3)
    return _png(fig)


def fig_confusion(c: dict) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for ax, key, title in ((axes[0], "confusion", "SDN confusion (normalised)"),
                           (axes[1], "confidence", "final output's max softmax (the CNN's confidence)")):
        h = c[key]["histogram"]
        edges = np.asarray(h["edges"])
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        for group, color in (("correct", "tab:blue"), ("wrong", "tab:red")):
            counts = np.asarray(h[group], dtype=float)
            dens = counts / counts.sum() if counts.sum() else counts
            ax.bar(centers, dens, width, alpha=0.5, color=color, label=f"{group} ({int(counts.sum())})")
        auroc = c[key]["auroc"]
        ax.set_title(f"{title}\nAUROC for errors: {'n/a' if auroc is None else f'{auroc:.3f}'}", fontsize=8)
        ax.set_ylabel("share of group")
        ax.legend(fontsize=7)
    return _png(fig)


def fig_image_grid(images: np.ndarray, rows: list[tuple[str, list[int]]], record: ExitRecord, classes: list[str],
                   output_of_row: list[int]) -> str:
    """Rows of example images; each titled with the row's output prediction and the true label."""
    plt = _plt()
    ncols = max([len(idx) for _, idx in rows] + [1])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.25 * ncols + 1.2, 1.45 * len(rows)), squeeze=False)
    for r, ((label, idx), out) in enumerate(zip(rows, output_of_row)):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                i = idx[c]
                ax.imshow(images[i], interpolation="nearest")
                pred, true = record.preds[i, out], record.labels[i]
                final = record.preds[i, -1]
                ax.set_title(f"{classes[pred]}\n(true {classes[true]}, final {classes[final]})", fontsize=5.5)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------------
# the analysis of one run


def analyze(records: dict[str, ExitRecord], *, max_drop: float = 0.01, budget: float | None = None,
            fallback: str = "most_confident") -> dict[str, Any]:
    """Every figure of the report from a run's train/val/test records (no drawing, no network)."""
    val, test = records["val"], records["test"]
    k = test.num_outputs
    names = output_names(k)
    val_acc, test_acc = val.accuracy(), test.accuracy()
    per_output = [{"output": names[i], "gflops": float(test.costs[i] / 1e9), "relative_cost": float(test.relative_costs[i]),
                   "val_accuracy": float(val_acc[i]), "test_accuracy": float(test_acc[i])} for i in range(k)]
    swept = {split: sweep(rec, fallback=fallback) for split, rec in (("val", val), ("test", test))}
    curves = {split: {key: v.tolist() for key, v in s.items()} for split, s in swept.items()}
    calibrated = calibrate(val, test, max_drop=max_drop, fallback=fallback, swept=swept["val"])
    result: dict[str, Any] = {
        "num_outputs": k,
        "cnn_gflops": float(test.cnn_cost / 1e9),
        "outputs": per_output,
        "early_exit": {
            "fallback": fallback,
            "calibrated": calibrated,
            "reference_protocol": reference_protocol(test, max_drop, fallback),
            "curves": curves,
        },
        "overthinking": overthinking(test),
    }
    if budget is not None:
        result["early_exit"]["calibrated_budget"] = calibrate(val, test, budget=budget, fallback=fallback,
                                                              swept=swept["val"])
    conf = confusion(test, stats=records.get("train"))
    conf.pop("scores")
    result["confusion"] = conf
    return result


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def render_html(result: dict[str, Any], figures: dict[str, str], title: str, extra_sections: list[str] = ()) -> str:
    """The report page: tables from ``result``, figures embedded as base64 PNGs."""
    ee = result["early_exit"]
    cal = ee["calibrated"]
    o = result["overthinking"]
    c = result["confusion"]
    names = [p["output"] for p in result["outputs"]]

    def img(key: str, alt: str) -> str:
        if key not in figures:
            return ""
        return f'<figure id="fig-{key}"><img alt="{html.escape(alt)}" src="data:image/png;base64,{figures[key]}"></figure>'

    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=meta>{html.escape(result['meta_line'])}</p>",
        '<section id="outputs"><h2>Outputs</h2>' + _table(
            ["output", "GFLOPs (cumulative)", "cost / CNN", "val accuracy", "test accuracy"],
            [[p["output"], f"{p['gflops']:.4f}", f"{100 * p['relative_cost']:.1f}%", _pct(p["val_accuracy"]),
              _pct(p["test_accuracy"])] for p in result["outputs"]]) + "</section>",
        '<section id="early-exit"><h2>Early exits</h2>'
        f"<p>Threshold calibrated on the <b>validation</b> split: the cheapest whose accuracy is within "
        f"{100 * cal['rule'].get('max_drop', 0):.1f} points of the final output's; fallback when no IC is confident: "
        f"{html.escape(ee['fallback'])}.</p>"
        + _table(["", "threshold", "accuracy", "final output alone", "cost / CNN", "exits per output"],
                 [["validation (chooses)", f"{cal['threshold']:.6g}", _pct(cal["val"]["accuracy"]),
                   _pct(cal["val"]["final_accuracy"]), f"{100 * cal['val']['relative_cost']:.1f}%",
                   " ".join(map(str, cal["val"]["exit_counts"]))],
                  ["test (reports)", f"{cal['threshold']:.6g}", _pct(cal["test"]["accuracy"]),
                   _pct(cal["test"]["final_accuracy"]), f"{100 * cal['test']['relative_cost']:.1f}%",
                   " ".join(map(str, cal["test"]["exit_counts"]))]])
        + img("accuracy_cost", "accuracy against cost")
        + f"<h3>For comparison: {html.escape(ee['reference_protocol']['label'])}</h3>"
        + _table(["threshold", "test accuracy", "cost / CNN"],
                 [[r["threshold"], _pct(r["accuracy"]), f"{100 * r['relative_cost']:.1f}%"]
                  for r in ee["reference_protocol"]["rows"]])
        + f"<p>Chosen on the test set: q = {ee['reference_protocol']['chosen_threshold']}.</p></section>",
        '<section id="overthinking"><h2>Overthinking</h2>'
        f"<p>{o['early_count']} of {o['num_inputs']} test inputs ({_pct(o['early_share'])}) are classified correctly "
        f"by some IC before the final output (wasteful overthinking). An oracle that stops each input at the first "
        f"output that gets it right would cost {_pct(o['oracle_relative_cost'])} of the CNN. "
        f"Destructive overthinking: {o['destructive']['union_count']} inputs some IC gets right and the final output "
        f"gets wrong, {_pct(o['destructive']['union_share_of_final_errors'])} of the final output's "
        f"{o['final_errors']} errors.</p>"
        + _table(["output", "correct", "cumulatively correct", "first correct here", "destructive (IC right, final wrong)",
                  "IC confidence: destructive / all correct"],
                 [[names[i], o["correct"][i], o["cumulative_correct"][i], o["newly_correct"][i],
                   o["destructive"]["per_ic"][i]["count"] if i < len(names) - 1 else "",
                   (f"{o['destructive']['per_ic'][i]['mean_confidence_destructive'] or 0:.3f} / "
                    f"{o['destructive']['per_ic'][i]['mean_confidence_correct'] or 0:.3f}") if i < len(names) - 1 else ""]
                  for i in range(len(names))])
        + img("overthinking", "correct per output") + img("destructive", "destructive overthinking")
        + "<h3>Inputs first classified correctly at each output (simple to complex)</h3>" + img("first_correct", "first correct")
        + "<h3>Inputs only the first IC gets right</h3>"
        + (img("only_first", "only the first IC") if "only_first" in figures else "<p>None in the test split.</p>")
        + "</section>",
        '<section id="confusion"><h2>Confusion</h2>'
        f"<p>Confusion of an input: the sum over outputs of the L1 distance between its softmax and the final's, "
        f"normalised by the {html.escape(c['normalisation']['from'])} (mean {c['normalisation']['mean']:.4f}, "
        f"std {c['normalisation']['std']:.4f}). How well each score separates the final output's errors:</p>"
        + _table(["score", "AUROC for errors", "mean on correct", "mean on wrong", "wrong beyond correct mean",
                  "correct beyond wrong mean"],
                 [[name, "n/a" if s["auroc"] is None else f"{s['auroc']:.4f}",
                   "n/a" if s["mean_correct"] is None else f"{s['mean_correct']:.4f}",
                   "n/a" if s["mean_wrong"] is None else f"{s['mean_wrong']:.4f}",
                   s["wrong_beyond_correct_mean"], s["correct_beyond_wrong_mean"]]
                  for name, s in (("SDN confusion", c["confusion"]), ("final max softmax", c["confidence"]))])
        + img("confusion", "confusion histograms") + "</section>",
        *extra_sections,
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;"
             "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}"
             "figure{margin:.8em 0}.meta{color:#666}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(sections) + "</body></html>\n")


def backdoor_section(b: dict[str, Any], outputs: list[dict], classes: list[str]) -> str:
    """The HTML of the backdoor section."""
    t = b["trigger"]
    rows = [["final output alone", _pct(b["clean_accuracy_final"]), _pct(b["triggered_accuracy_final"]),
             _pct(b["attack_success_final"]), "100%"]]
    ee = b.get("early_exit")
    if ee:
        rows.append([f"early exits (q = {ee['threshold']:.4g}, calibrated on clean validation data)",
                     _pct(ee["clean_accuracy"]), _pct(ee["triggered_accuracy"]), _pct(ee["attack_success"]),
                     f"{100 * ee['triggered_relative_cost']:.1f}%"])
    per = b["per_output"]
    text = (f"<p>Trigger: a white {t['size']}x{t['size']} px square at row {t['row']}, column {t['col']}; "
            f"{100 * t['rate']:.1f}% of the training inputs poisoned and relabelled to class "
            f"{html.escape(str(classes[t['target']]))}. Triggered set: {b['triggered_inputs']} test inputs of other "
            f"classes with the trigger pasted on, scored against their true labels.</p>")
    if b.get("destructive_on_triggered"):
        d = b["destructive_on_triggered"]
        text += (f"<p>Destructive overthinking on triggered inputs: {d['union_count']} inputs some IC gets right and "
                 f"the final output gets wrong ({_pct(d['union_share_of_final_errors'])} of its errors there); per IC "
                 f"{', '.join(map(str, d['per_ic']))}.</p>")
    return ('<section id="backdoor"><h2>Backdoor</h2>' + text
            + _table(["", "clean accuracy", "accuracy on triggered inputs", "attack success", "cost on triggered"], rows)
            + _table(["output", "clean accuracy", "triggered accuracy", "attack success"],
                     [[o["output"], _pct(per["clean_accuracy"][i]), _pct(per["triggered_accuracy"][i]),
                       _pct(per["attack_success"][i])] for i, o in enumerate(outputs)])
            + "</section>")


def analyze_run(run: str | Path, out: str | Path | None = None, *, max_drop: float = 0.01,
                budget: float | None = None, fallback: str = "most_confident", device: str = "cpu",
                log=None) -> tuple[Path, Path]:
    """Collect (or reuse) a run's records and write ``report.html`` and ``report.json``."""
    from .runs import RUN_JSON, read_json, write_bytes, write_json

    from .backdoor import backdoor_figures, backdoor_of

    run = Path(run)
    meta = read_json(run / RUN_JSON)
    is_sdn = meta.get("model", {}).get("kind") == "sdn"
    out = Path(out) if out else run / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose another --out")
    data = load_run_data(run)  # for the image grids and class names; the model loads only if a record is missing
    backdoor = backdoor_of(run)
    splits = ("train", "val", "test") + (("test+trigger",) if backdoor is not None else ())
    records = run_records(run, splits, data=data, device=device, log=log)
    t0 = time.perf_counter()
    result = analyze(records, max_drop=max_drop, budget=budget, fallback=fallback)
    seconds = time.perf_counter() - t0
    cfg = meta["config"]
    if backdoor is not None:
        cal = result["early_exit"]["calibrated"]
        result["backdoor"] = backdoor_figures(records["test"], records["test+trigger"], backdoor,
                                              cal["threshold"] if is_sdn else None, fallback)
    result = {"run": str(run.resolve()), "arch": cfg["arch"], "data": cfg["data"], "mode": cfg["mode"],
              "meta_line": f"{cfg['arch']} trained with --mode {cfg['mode']} on {cfg['data']}; "
                           f"{records['test'].num_inputs} test, {records['val'].num_inputs} validation, "
                           f"{records['train'].num_inputs} training inputs; analyses took {seconds:.2f}s",
              **result}
    # example images, shown un-normalised, for the grids
    test = records["test"]
    images = data.test.images.numpy()
    classes = data.meta.get("class_names", data.classes)
    o = result["overthinking"]
    k = test.num_outputs
    rows = [(n, idx) for n, idx in zip(output_names(k), o["examples_first_correct"])]
    figures = {
        "accuracy_cost": fig_accuracy_cost(result["early_exit"]["curves"], result["outputs"],
                                           result["early_exit"]["calibrated"], result["early_exit"]["reference_protocol"]),
        "overthinking": fig_overthinking(o),
        "confusion": fig_confusion(result["confusion"]),
        "first_correct": fig_image_grid(images, rows, test, classes, list(range(k))),
    }
    if k > 1:
        figures["destructive"] = fig_destructive(o)
    if o["examples_only_first"]:
        figures["only_first"] = fig_image_grid(images, [("IC 1", o["examples_only_first"])], test, classes, [0])
    result["images"] = {
        "first_correct": {n: [int(test.ids[i]) for i in idx] for n, idx in rows},
        "only_first_ic": [int(test.ids[i]) for i in o["examples_only_first"]],
        "note": "test-split ids (positions in the data set's test split)",
    }
    extra = []
    if backdoor is not None:
        extra.append(backdoor_section(result["backdoor"], result["outputs"], classes))
    explain_json = run / "explain" / "explain.json"
    if explain_json.is_file() and (run / "explain" / "explanations.png").is_file():
        ex = read_json(explain_json)
        figures["explanations"] = base64.b64encode((run / "explain" / "explanations.png").read_bytes()).decode()
        result["explanations"] = ex
        extra.append('<section id="explanations"><h2>Why IC 1 and the final output disagree</h2>'
                     f"<p>{ex['count_total']} {html.escape(ex['split'])} inputs are right at IC 1 and wrong at the final "
                     f"output; the first {len(ex['inputs'])}: Grad-CAM, guided backprop and guided Grad-CAM of IC 1's "
                     "prediction on the network cut after IC 1, beside the same for the final output's prediction.</p>"
                     f'<figure id="fig-explanations"><img alt="explanations" '
                     f'src="data:image/png;base64,{figures["explanations"]}"></figure></section>')
    page = render_html(result, figures, f"shallowdeep report: {run.name}", extra)
    cal = result["early_exit"]["calibrated"]
    if is_sdn:  # the engine's default threshold: chosen on the validation split, tied to these weights
        write_json(run / "calibration.json", {"threshold": cal["threshold"], "fallback": cal["fallback"],
                                              "rule": cal["rule"], "val": cal["val"], "test": cal["test"],
                                              "weights_sha256": records["test"].meta.get("weights_sha256")})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", result)
    write_bytes(out / "report.html", page.encode())
    return out / "report.html", out / "report.json"
