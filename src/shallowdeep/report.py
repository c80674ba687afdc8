"""The report: draws and lays out the analyses of a run as one self-contained HTML page.

It computes nothing: every number comes from a :class:`~shallowdeep.analysis.RunAnalysis` (typed
results). The HTML embeds its figures as base64 PNGs and links nothing outside itself, so it opens
offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from .analysis import BackdoorResult, Calibration, Confusion, Overthinking, RunAnalysis, Sweep
from .analysis.record import ExitRecord
from .core.io import JSONObject
from .core.outputs import output_names
from .reproduction_table import EnginePoint, Reproduction
from .runs.meta import RunMeta

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
    """A photo-like figure (image grids): PNG at twice the usual resolution, for sharp laptop screens."""
    return "png:" + base64.b64encode(png_bytes(fig, dpi=220)).decode()


def _svg(fig) -> str:
    """A chart as SVG: vector, sharp at any zoom; text stays text."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    return "svg:" + base64.b64encode(buf.getvalue()).decode()


def _style() -> None:
    plt = _plt()
    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 9.5,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "svg.fonttype": "none",
        }
    )


def _mark_calibrations(ax: Any, analysis: RunAnalysis) -> None:
    """The calibrated operating points (one threshold, per-IC) and the reference's 11 thresholds."""
    cal, per, rows = analysis.calibrated, analysis.per_ic, analysis.reference.rows
    if cal.test is not None:
        label = f"calibrated on val: q={cal.threshold:.4g} (test)"
        style = {"marker": "*", "s": 160, "c": "tab:green", "zorder": 5, "label": label}
        ax.scatter([cal.test.relative_cost], [cal.test.accuracy * 100], **style)
    if per.test is not None and per.thresholds is not None:
        label = "per-IC thresholds, calibrated on val (test)"
        style = {"marker": "P", "s": 90, "c": "tab:purple", "zorder": 5, "label": label}
        ax.scatter([per.test.relative_cost], [per.test.accuracy * 100], **style)
    style = {"marker": "x", "s": 22, "c": "tab:gray", "zorder": 3, "label": "reference's 11 thresholds (test)"}
    ax.scatter([r["relative_cost"] for r in rows], [r["accuracy"] * 100 for r in rows], **style)


def fig_accuracy_cost(curves: dict[str, Sweep], analysis: RunAnalysis) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for split, style in (("val", "--"), ("test", "-")):
        c = curves[split]
        ax.plot(
            c.relative_cost,
            c.accuracy * 100,
            style,
            lw=1.4,
            label=f"early exits, {split} ({len(c.thresholds)} thresholds)",
        )
    xs = [o.relative_cost for o in analysis.outputs]
    ys = [o.test_accuracy * 100 for o in analysis.outputs]
    ax.scatter(xs, ys, c="k", s=18, zorder=3, label="each output alone (test)")
    for o, x, y in zip(analysis.outputs, xs, ys):
        ax.annotate(o.output, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.scatter(
        [1.0],
        [analysis.outputs[-1].test_accuracy * 100],
        marker="s",
        s=50,
        c="tab:red",
        zorder=4,
        label="final output (cost of the CNN alone: 1)",
    )
    _mark_calibrations(ax, analysis)
    ax.set_xlabel("average cost / plain CNN cost")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def fig_overthinking(o: Overthinking) -> str:
    plt = _plt()
    k = o.num_outputs
    names = output_names(k)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    w = 0.27
    ax.bar(x - w, o.correct, w, label="correct")
    ax.bar(x, o.cumulative_correct, w, label="correct at this or an earlier output")
    ax.bar(x + w, o.newly_correct, w, label="first correct here")
    ax.set_xticks(x, names)
    ax.set_ylabel("test inputs")
    ax.set_xlabel("output")
    ax.set_title(f"wasteful overthinking: {100 * o.early_share:.1f}% of inputs are right at some IC", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def fig_destructive(o: Overthinking) -> str:
    plt = _plt()
    per = o.destructive_per_ic
    names = output_names(o.num_outputs)[:-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    a1.bar(names, [p.count for p in per], color="tab:red")
    a1.set_title("IC right, final wrong (destructive)")
    a1.set_ylabel("test inputs")
    a1.set_xlabel("IC")
    x = np.arange(len(per))
    a2.bar(
        x - 0.2, [p.mean_confidence_destructive or 0 for p in per], 0.4, label="on destructive inputs", color="tab:red"
    )
    a2.bar(
        x + 0.2, [p.mean_confidence_correct or 0 for p in per], 0.4, label="on all its correct inputs", color="tab:blue"
    )
    a2.set_xticks(x, names)
    a2.set_ylim(0, 1)
    a2.set_xlabel("IC")
    a2.set_ylabel("mean max softmax")
    a2.set_title("mean IC confidence", pad=22)
    a2.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    for a in (a1, a2):
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def fig_confusion(c: Confusion) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for ax, sep, title, xlabel in (
        (axes[0], c.confusion, "SDN confusion (normalised)", "confusion score"),
        (axes[1], c.confidence, "final output's max softmax", "confidence"),
    ):
        h = sep.histogram
        edges = np.asarray(h.edges)
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        for group, counts, color in (("correct", h.correct, "tab:blue"), ("wrong", h.wrong, "tab:red")):
            counts = np.asarray(counts, dtype=float)
            dens = counts / counts.sum() if counts.sum() else counts
            ax.bar(centers, dens, width, alpha=0.5, color=color, label=f"{group} ({int(counts.sum())})")
        ax.set_title(f"{title}\nAUROC for errors: {'n/a' if sep.auroc is None else f'{sep.auroc:.3f}'}")
        ax.set_ylabel("share of group")
        ax.set_xlabel(xlabel)
        ax.legend(frameon=False)
    fig.tight_layout()
    return _svg(fig)


GRID_COLUMNS = 6


def fig_image_grid(
    images: np.ndarray,
    rows: list[tuple[str, list[int]]],
    record: ExitRecord,
    classes: list[str],
    output_of_row: list[int],
) -> str:
    """Rows of example images; each titled with the row's output prediction and the true label."""
    plt = _plt()
    rows = [(label, idx[:GRID_COLUMNS]) for label, idx in rows]  # few per row: captions stay readable
    ncols = max([len(idx) for _, idx in rows] + [1])
    # one axes whose data units are inches, every image placed in it: 40-odd axes with titles and a
    # tight layout took most of a report's drawing time (a 7 x 6 grid: 1.5-1.6 s, now 0.6-0.7 s on the VM)
    cell_w, cell_h, side, box = 1.5, 2.1, 0.8, 1.2  # inches; side: the row labels
    width, height = side + cell_w * ncols, cell_h * len(rows)
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-side, cell_w * ncols)  # set limits stay: the images placed below do not rescale them
    ax.set_ylim(height, 0)
    ax.axis("off")
    for r, ((label, idx), out) in enumerate(zip(rows, output_of_row)):
        top = r * cell_h + 0.72  # room above for a three-line caption
        for c, i in enumerate(idx):
            h, w = images[i].shape[:2]
            iw, ih = (box, box * h / w) if w >= h else (box * w / h, box)
            x0 = c * cell_w + (cell_w - iw) / 2
            ax.imshow(images[i], interpolation="nearest", extent=(x0, x0 + iw, top + ih, top))
            pred, true = record.preds[i, out], record.labels[i]
            final = record.preds[i, -1]
            ax.text(
                c * cell_w + cell_w / 2,
                top - 0.05,
                f"{classes[pred]}\n(true {classes[true]},\nfinal {classes[final]})",
                fontsize=10.5,
                ha="center",
                va="bottom",
            )
        ax.text(-0.1, top + box / 2, label, ha="right", va="center", fontsize=12)
    return _png(fig)


def fig_training(epochs: list[JSONObject]) -> str:
    """Validation accuracy of every output and the training loss, per epoch."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    x = [e["epoch"] for e in epochs]
    k = len(epochs[0]["val_acc"])
    for i, name in enumerate(output_names(k)):
        a1.plot(x, [100 * e["val_acc"][i] for e in epochs], lw=1.4, label=name)
    a1.set_xlabel("epoch")
    a1.set_ylabel("validation accuracy (%)")
    a1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    a2.plot(x, [e["train_loss"] for e in epochs], color="k", lw=1.4)
    a2.set_xlabel("epoch")
    a2.set_ylabel("training loss")
    from matplotlib.ticker import MaxNLocator

    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _svg(fig)


def fig_threshold(curves: dict[str, Sweep], chosen: float) -> str:
    """Accuracy and average cost of early exits against the threshold, validation and test."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for split, style in (("val", "--"), ("test", "-")):
        c = curves[split]
        a1.plot(c.thresholds, c.accuracy * 100, style, lw=1.3, label=split)
        a2.plot(c.thresholds, c.relative_cost * 100, style, lw=1.3, label=split)
    for a, label in ((a1, "accuracy (%)"), (a2, "average cost (% of the CNN)")):
        a.axvline(chosen, color="tab:green", lw=1, label=f"calibrated q={chosen:.3g}")
        a.set_xlabel("confidence threshold q")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
        a.legend(frameon=False)
    fig.tight_layout()
    return _svg(fig)


def fig_exits(cal: Calibration, names: list[str]) -> str:
    """Where inputs leave at the calibrated threshold, validation and test (share of inputs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    x = np.arange(len(names))
    for j, (split, point) in enumerate((("validation", cal.val), ("test", cal.test))):
        if point is None:
            continue
        counts = np.asarray(point.exit_counts, dtype=float)
        ax.bar(x + (j - 0.5) * 0.4, 100 * counts / max(counts.sum(), 1), 0.4, label=split)
    ax.set_xticks(x, [n if n != "final" else "no IC exit" for n in names])
    ax.set_xlabel("where inputs leave")
    ax.set_ylabel("inputs (%)")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def fig_rules(comparison) -> str:
    """Accuracy against cost of every exit rule on the test record, with its validation-chosen point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(comparison.results):
        color = f"C{i}"
        c = r.curve
        if len(c.thresholds) > 1:
            ax.plot(c.relative_cost, c.accuracy * 100, lw=1.2, color=color, label=r.rule.label)
        t = r.calibration.test
        ax.scatter(
            [t.relative_cost],
            [t.accuracy * 100],
            marker="*",
            s=120,
            color=color,
            zorder=4,
            label=f"{r.rule.label}: chosen on val" if len(c.thresholds) > 1 else f"{r.rule.label} (one setting)",
        )
    ax.set_xlabel("average cost / plain CNN cost")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def fig_reliability(rel: list, names: list[str]) -> str:
    """Reliability diagrams of every output: accuracy against mean confidence per bin."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="perfectly calibrated")
    for r, name in zip(rel, names):
        pts = [(c, a) for c, a in zip(r.mean_confidence, r.accuracy) if c is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=f"{name} (ECE {r.ece:.3f})")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def explanation_grid(panels: np.ndarray, titles: tuple[str, ...], row_labels: list[str]) -> bytes:
    """A PNG of explanation panels ``[N, P, H, W, 3]``: one row per input, one column per title."""
    plt = _plt()
    n, cols = panels.shape[0], panels.shape[1]
    fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.7 * n + 0.4), squeeze=False)
    for i in range(n):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(panels[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=6.5)
        axes[i][0].set_ylabel(row_labels[i], fontsize=6)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


def figures(
    analysis: RunAnalysis,
    test: ExitRecord,
    images: np.ndarray,
    classes: list[str],
    epochs: list[JSONObject] | None = None,
) -> dict[str, str]:
    """Every figure of the report by key: ``"svg:<base64>"`` charts, ``"png:<base64>"`` image grids."""
    _style()
    o = analysis.overthinking
    k = test.num_outputs
    names = output_names(k)
    rows = list(zip(names, o.examples_first_correct))
    figs = {
        "confusion": fig_confusion(analysis.confusion),
        "reliability": fig_reliability(analysis.reliability, names),
        "first_correct": fig_image_grid(images, rows, test, classes, list(range(k))),
    }
    if epochs:
        figs["training"] = fig_training(epochs)
    if k > 1:
        figs["accuracy_cost"] = fig_accuracy_cost(analysis.curves, analysis)
        figs["threshold"] = fig_threshold(analysis.curves, analysis.calibrated.threshold)
        figs["exits"] = fig_exits(analysis.calibrated, names)
        figs["overthinking"] = fig_overthinking(o)
        figs["destructive"] = fig_destructive(o)
    if analysis.rules is not None:
        figs["rules"] = fig_rules(analysis.rules)
    if o.examples_only_first:
        figs["only_first"] = fig_image_grid(images, [("IC 1", o.examples_only_first)], test, classes, [0])
    return figs


# --------------------------------------------------------------------------------------------------
# the page


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _thresholds_text(cal: Calibration) -> str:
    return " ".join(f"{q:.4g}" for q in cal.thresholds) if cal.thresholds is not None else f"{cal.threshold:.6g}"


def _calibration_rows(cal: Calibration, per_ic: Calibration | None = None) -> list[list[Any]]:
    rows = []
    for kind, c in (("one threshold", cal), ("per-IC thresholds", per_ic)):
        if c is None:
            continue
        for label, p in (("validation (chooses)", c.val), ("test (reports)", c.test)):
            if p is not None:
                rows.append(
                    [
                        f"{kind}: {label}",
                        _thresholds_text(c),
                        _pct(p.accuracy),
                        _pct(p.final_accuracy),
                        f"{100 * p.relative_cost:.1f}%",
                        " ".join(map(str, p.exit_counts)),
                    ]
                )
    return rows


def _run_section(run_meta: RunMeta | None) -> str:
    if run_meta is None:
        return ""
    cfg, data, rt = run_meta.config, run_meta.data, run_meta.runtime
    seconds = sum(run_meta.epoch_seconds())
    rows = [
        ["architecture, mode", f"{cfg.arch}, {cfg.mode}" + (f" (from {cfg.from_run})" if cfg.from_run else "")],
        [
            "data",
            f"{cfg.data}: "
            + ", ".join(f"{k} {v}" for k, v in (data.details.get("sizes") or {}).items())
            + f"; {data.image_size} px",
        ],
        ["recipe", ", ".join(f"{k} {v}" for k, v in run_meta.recipe.to_json().items())],
        ["seed", cfg.seed],
        ["runtime", ", ".join(f"{k} {v}" for k, v in rt.items() if k != "weights_sha256_per_rank")],
        ["training time", f"{seconds:.1f} s over {len(run_meta.epochs)} epochs (validation included)"],
    ]
    body = "".join(f"<tr><th>{html.escape(str(a))}</th><td class=l>{html.escape(str(b))}</td></tr>" for a, b in rows)
    return f'<section id="run"><h2>Run</h2><table class=kv><tbody>{body}</tbody></table></section>'


class _Figures:
    """The page's embedded figures by key (``svg:BASE64`` or ``png:BASE64``)."""

    def __init__(self, figures: dict[str, str]) -> None:
        self.figures = figures

    def __contains__(self, key: str) -> bool:
        return key in self.figures

    def img(self, key: str, alt: str) -> str:
        if key not in self.figures:
            return ""
        kind, _, data = self.figures[key].partition(":")
        mime = "image/svg+xml" if kind == "svg" else "image/png"
        return f'<figure id="fig-{key}"><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"></figure>'


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;"
    "font-size:15px;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}th{background:#f3f3f3}"
    "td:first-child{text-align:left}img{max-width:100%;height:auto}figure{margin:.8em 0}.meta{color:#666}"
    "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}code{background:#f5f5f5}"
    "table.kv th{text-align:left;white-space:nowrap}td.l{text-align:left}"
)


def render_html(
    analysis: RunAnalysis,
    figures: dict[str, str],
    title: str,
    meta_line: str,
    extra_sections: list[str] = (),
    run_meta: RunMeta | None = None,
    classes: list[str] | None = None,
    engine: tuple[str, Calibration] | None = None,
) -> str:
    """The report page: tables from ``analysis``; figures embedded (SVG charts, PNG image grids);
    ``engine``: the exit rule and calibration written for ``predict`` and the engine. One function
    per section below."""
    fig = _Figures(figures)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=meta>{html.escape(meta_line)}</p>",
        _run_section(run_meta),
        (
            '<section id="training"><h2>Training</h2>'
            + fig.img("training", "validation accuracy and loss per epoch")
            + "</section>"
        )
        if "training" in fig
        else "",
        _outputs_section(analysis),
    ]
    if analysis.num_outputs == 1:
        sections.append(
            '<section id="early-exit"><h2>Early exits</h2><p>This is a plain CNN: it has one output, '
            "so there is nothing to exit early from and no overthinking to measure. Turn it into an SDN "
            "by training its ICs on this run (the <code>ic-only</code> training mode) and analyze that "
            "run.</p></section>"
        )
    else:
        sections += [
            _early_exit_section(analysis, fig, engine),
            _overthinking_section(analysis, fig),
            _confusion_section(analysis.confusion, fig),
        ]
    sections.append(
        '<section id="calibration"><h2>Are the confidences calibrated?</h2><p>Reliability diagram of every output '
        "on the test split (15 equal-width confidence bins) and its expected calibration error (ECE): early exits "
        "trust these confidences.</p>" + fig.img("reliability", "reliability diagrams") + "</section>"
    )
    if analysis.rules is not None:
        sections.append(_rules_section(analysis, fig))
    if classes is not None and len(classes) <= 200:
        sections.append(_classes_section(analysis, classes))
    sections += list(extra_sections)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>" + "\n".join(x for x in sections if x) + "</body></html>\n"
    )


def _exit_head(analysis: RunAnalysis) -> str:
    names = [p.output for p in analysis.outputs]
    return "exits per output (" + ", ".join(names[:-1] + ["no IC exit"]) + ")"


def _outputs_section(analysis: RunAnalysis) -> str:
    return (
        '<section id="outputs"><h2>Outputs</h2>'
        + _table(
            ["output", "GFLOPs (cumulative)", "cost / CNN", "val accuracy", "test accuracy", "ECE (test)"],
            [
                [
                    p.output,
                    f"{p.gflops:.4f}",
                    f"{100 * p.relative_cost:.1f}%",
                    _pct(p.val_accuracy),
                    _pct(p.test_accuracy),
                    f"{r.ece:.3f}",
                ]
                for p, r in zip(analysis.outputs, analysis.reliability)
            ],
        )
        + "</section>"
    )


def _budget_table(analysis: RunAnalysis) -> str:
    b = analysis.calibrated_budget
    if b is None:
        return ""
    return f"<h3>Most accurate within a cost budget of {100 * b.rule['budget']:.1f}% of the CNN</h3>" + _table(
        ["", "threshold(s)", "accuracy", "final output alone", "cost / CNN", "exits per output"],
        _calibration_rows(b, analysis.per_ic_budget),
    )


def _engine_paragraph(engine: tuple[str, Calibration] | None) -> str:
    """What ``predict`` and the engine use, and how cross-validation chose it."""
    if engine is None:
        return ""
    rule, ec = engine
    kind = "one threshold per IC" if ec.thresholds is not None else "one threshold for every IC"
    used = (
        f"<p><b>What <code>predict</code> and the engine use</b> (<code>calibration.json</code>): the "
        f"{html.escape(rule)} rule, {kind}: {html.escape(_thresholds_text(ec))}; validation "
        f"{_pct(ec.val.accuracy)} at {100 * ec.val.relative_cost:.1f}% of the CNN's cost"
        + (f", test {_pct(ec.test.accuracy)} at {100 * ec.test.relative_cost:.1f}%" if ec.test else "")
        + "."
    )
    cv = ec.cross_validation
    if cv and "per_ic" in cv:
        used += (
            f" Chosen by {cv['folds']}-fold cross-validation on the validation split (thresholds fitted on four "
            "folds, exits measured on the fifth, pooled): one threshold "
            f"{_pct(cv['single']['accuracy'])} at {100 * cv['single']['relative_cost']:.1f}%, per-IC "
            f"{_pct(cv['per_ic']['accuracy'])} at {100 * cv['per_ic']['relative_cost']:.1f}%."
        )
    elif cv:
        used += f" One threshold: {html.escape(str(cv.get('reason')))} to cross-validate per-IC thresholds."
    return used + "</p>"


def _early_exit_section(analysis: RunAnalysis, fig: _Figures, engine: tuple[str, Calibration] | None) -> str:
    cal, ref = analysis.calibrated, analysis.reference
    return (
        '<section id="early-exit"><h2>Early exits</h2>'
        f"<p>Threshold calibrated on the <b>validation</b> split: the cheapest whose accuracy is within "
        f"{100 * cal.rule.get('max_drop', 0):.1f} points of the final output's; fallback when no IC is confident: "
        f"{html.escape(analysis.fallback)}. One threshold for every IC is the paper's; per-IC thresholds start "
        "there and move one IC at a time on the validation split (coordinate descent, also on cost minus a "
        "multiple of accuracy so that ICs can trade accuracy), never worse than one threshold on validation; "
        "the test rows say whether that holds on unseen data.</p>"
        + _table(
            ["", "threshold(s)", "accuracy", "final output alone", "cost / CNN", _exit_head(analysis)],
            _calibration_rows(cal, analysis.per_ic),
        )
        + _budget_table(analysis)
        + _engine_paragraph(engine)
        + fig.img("exits", "where inputs leave at the calibrated threshold")
        + fig.img("accuracy_cost", "accuracy against cost")
        + fig.img("threshold", "accuracy and cost against the threshold")
        + f"<h3>For comparison: {html.escape(ref.label)}</h3>"
        + _table(
            ["threshold", "test accuracy", "cost / CNN"],
            [[r["threshold"], _pct(r["accuracy"]), f"{100 * r['relative_cost']:.1f}%"] for r in ref.rows],
        )
        + f"<p>Chosen on the test set: q = {ref.chosen_threshold}.</p></section>"
    )


def _overthinking_section(analysis: RunAnalysis, fig: _Figures) -> str:
    o, names = analysis.overthinking, [p.output for p in analysis.outputs]
    per, k = o.destructive_per_ic, len(names)
    rows = [
        [
            names[i],
            o.correct[i],
            o.cumulative_correct[i],
            o.newly_correct[i],
            per[i].count if i < k - 1 else "",
            (f"{per[i].mean_confidence_destructive or 0:.3f} / {per[i].mean_confidence_correct or 0:.3f}")
            if i < k - 1
            else "",
        ]
        for i in range(k)
    ]
    head = ["output", "correct", "cumulatively correct", "first correct here"]
    head += ["destructive (IC right, final wrong)", "IC confidence: destructive / all correct"]
    return (
        '<section id="overthinking"><h2>Overthinking</h2>'
        f"<p>{o.early_count} of {o.num_inputs} test inputs ({_pct(o.early_share)}) are classified correctly "
        f"by some IC before the final output (wasteful overthinking). An oracle that stops each input at the first "
        f"output that gets it right would cost {_pct(o.oracle_relative_cost)} of the CNN. "
        f"Destructive overthinking: {o.destructive_union_count} inputs some IC gets right and the final output "
        f"gets wrong, {_pct(o.destructive_union_share_of_final_errors)} of the final output's "
        f"{o.final_errors} errors.</p>"
        + _table(head, rows)
        + fig.img("overthinking", "correct per output")
        + fig.img("destructive", "destructive overthinking")
        + "<h3>Inputs first classified correctly at each output (simple to complex)</h3>"
        + fig.img("first_correct", "first correct")
        + "<h3>Inputs only the first IC gets right</h3>"
        + (fig.img("only_first", "only the first IC") if "only_first" in fig else "<p>None in the test split.</p>")
        + "</section>"
    )


def _confusion_section(c: Confusion, fig: _Figures) -> str:
    head = ["score", "AUROC for errors", "mean on correct", "mean on wrong"]
    head += ["wrong beyond correct mean", "correct beyond wrong mean"]
    rows = [
        [
            name,
            "n/a" if s.auroc is None else f"{s.auroc:.4f}",
            "n/a" if s.mean_correct is None else f"{s.mean_correct:.4f}",
            "n/a" if s.mean_wrong is None else f"{s.mean_wrong:.4f}",
            s.wrong_beyond_correct_mean,
            s.correct_beyond_wrong_mean,
        ]
        for name, s in (("SDN confusion", c.confusion), ("final max softmax", c.confidence))
    ]
    return (
        '<section id="confusion"><h2>Confusion</h2>'
        f"<p>Confusion of an input: the sum over outputs of the L1 distance between its softmax and the final's, "
        f"normalised by the {html.escape(c.normalisation['from'])} (mean {c.normalisation['mean']:.4f}, "
        f"std {c.normalisation['std']:.4f}). How well each score separates the final output's errors:</p>"
        + _table(head, rows)
        + fig.img("confusion", "confusion histograms")
        + "</section>"
    )


def _rules_section(analysis: RunAnalysis, fig: _Figures) -> str:
    rc, cal, names = analysis.rules, analysis.calibrated, [p.output for p in analysis.outputs]
    head = ["rule", "threshold", "val accuracy", "val cost", "test accuracy", "test cost"]
    head.append(_exit_head(analysis).replace("exits per output", "test exits"))
    rows = [
        [
            r.rule.label,
            f"{r.calibration.threshold:.4g}",
            _pct(r.calibration.val.accuracy),
            f"{100 * r.calibration.val.relative_cost:.1f}%",
            _pct(r.calibration.test.accuracy),
            f"{100 * r.calibration.test.relative_cost:.1f}%",
            " ".join(map(str, r.calibration.test.exit_counts)),
        ]
        for r in rc.results
    ]
    temps = [
        [names[i], f"{rc.temperatures[i]:.3f}", f"{rc.ece_before[i]:.4f}", f"{rc.ece_after[i]:.4f}"]
        for i in range(len(names))
    ]
    return (
        '<section id="rules"><h2>Exit rules compared</h2><p>Each rule exits at the first IC whose score reaches '
        "the threshold: max softmax; certainty 1 - H/log C (entropy); patience:k, k consecutive ICs agreeing. "
        "+T: on logits divided by one temperature per output, fitted on the validation split (NLL). Each "
        f"threshold is chosen on the validation split (cheapest within {100 * cal.rule.get('max_drop', 0):.1f} "
        "points of the final output) and reported on the test split.</p>"
        + _table(head, rows)
        + fig.img("rules", "accuracy against cost of every exit rule")
        + "<h3>Temperature scaling</h3>"
        + _table(["output", "temperature (fitted on val)", "ECE before (test)", "ECE after (test)"], temps)
        + "</section>"
    )


def _classes_section(analysis: RunAnalysis, classes: list[str]) -> str:
    pc, cal, k = analysis.per_class, analysis.calibrated, analysis.num_outputs
    return (
        '<section id="classes"><h2>Accuracy per class (test)</h2>'
        + _table(
            ["class", "inputs", "final output", f"early exits (q={cal.threshold:.3g})" if k > 1 else "—"],
            [
                [classes[i], pc.counts[i], _pct(pc.final[i]), _pct(pc.early_exit[i]) if k > 1 else ""]
                for i in range(len(classes))
            ],
        )
        + "</section>"
    )


def backdoor_section(b: BackdoorResult, outputs: list[str], classes: list[str]) -> str:
    """The HTML of the backdoor section."""
    t = b.trigger
    rows = [
        [
            "final output alone",
            _pct(b.clean_accuracy_final),
            _pct(b.triggered_accuracy_final),
            _pct(b.attack_success_final),
            "100%",
        ]
    ]
    ee = b.early_exit
    if ee is not None:
        rows.append(
            [
                f"early exits (q = {ee.threshold:.4g}, calibrated on clean validation data)",
                _pct(ee.clean_accuracy),
                _pct(ee.triggered_accuracy),
                _pct(ee.attack_success),
                f"{100 * ee.triggered_relative_cost:.1f}%",
            ]
        )
    per = b.per_output
    text = (
        f"<p>Trigger: a white {t['size']}x{t['size']} px square at row {t['row']}, column {t['col']}; "
        f"{100 * t['rate']:.1f}% of the training inputs poisoned and relabelled to class "
        f"{html.escape(str(classes[t['target']]))}. Triggered set: {b.triggered_inputs} test inputs of other "
        f"classes with the trigger pasted on, scored against their true labels.</p>"
    )
    if b.destructive_on_triggered:
        d = b.destructive_on_triggered
        text += (
            f"<p>Destructive overthinking on triggered inputs: {d['union_count']} inputs some IC gets right and "
            f"the final output gets wrong ({_pct(d['union_share_of_final_errors'])} of its errors there); per IC "
            f"{', '.join(map(str, d['per_ic']))}.</p>"
        )
    return (
        '<section id="backdoor"><h2>Backdoor</h2>'
        + text
        + _table(["", "clean accuracy", "accuracy on triggered inputs", "attack success", "cost on triggered"], rows)
        + _table(
            ["output", "clean accuracy", "triggered accuracy", "attack success"],
            [
                [
                    name,
                    _pct(per["clean_accuracy"][i]),
                    _pct(per["triggered_accuracy"][i]),
                    _pct(per["attack_success"][i]),
                ]
                for i, name in enumerate(outputs)
            ],
        )
        + "</section>"
    )


def explanations_section(count_total: int, split: str, shown: int, png_base64: str) -> str:
    """The HTML of the explanations section (the grid written by ``explain``)."""
    return (
        '<section id="explanations"><h2>Why IC 1 and the final output disagree</h2>'
        f"<p>{count_total} {html.escape(split)} inputs are right at IC 1 and wrong at the final output; the first "
        f"{shown}: Grad-CAM, guided backprop and guided Grad-CAM of IC 1's prediction on the network cut after "
        "IC 1, beside the same for the final output's prediction.</p>"
        f'<figure id="fig-explanations"><img alt="explanations" src="data:image/png;base64,{png_base64}"></figure>'
        "</section>"
    )


# --------------------------------------------------------------------------------------------------
# the reproduction table


def _p(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _auc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def reproduction_markdown(result: Reproduction) -> str:
    """The reproduction table (``shallowdeep reproduce``) as markdown."""
    lines = [
        f"# Reproduction on {result.data} ({result.device})",
        "",
        f"Epochs: CNN {result.epochs['cnn']}, IC-only {result.epochs['ic-only']}, SDN {result.epochs['sdn']}; "
        f"{result.note}.",
        "",
        "| network | SDN | final acc. | early exit: acc. / cost (val-calibrated q) | what predict uses "
        "(val-chosen): acc. / cost | reference protocol (q chosen on "
        "test): acc. / cost | right at some IC | destructive share of final errors | AUROC confusion / confidence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        cal, ref = r.calibrated, r.reference_protocol
        lines.append(
            f"| {r.arch} | {r.kind} | {_p(r.final_test_accuracy, 2)} | {_p(cal.test_accuracy, 2)} / "
            f"{_p(cal.test_relative_cost)} (q={cal.threshold:.4g}) | {_engine_text(r.engine)} | "
            f"{_p(ref.test_accuracy, 2)} / "
            f"{_p(ref.test_relative_cost)} (q={ref.threshold}) | {_p(r.early_share)} | "
            f"{_p(r.destructive_share)} | "
            f"{_auc(r.confusion_auroc)} / {_auc(r.confidence_auroc)} |"
        )
    for lead, items in _reproduction_sections(result):
        lines += ["", lead] + ([""] + [f"- {i}" for i in items] if items else [])
    return "\n".join(lines) + "\n"


def _reproduction_sections(result: Reproduction) -> list[tuple[str, list[str]]]:
    """What follows the reproduction table, as (lead sentence, items) pairs: the markdown and the
    HTML page render the same sections."""
    outputs = [
        f"{r.arch} {r.kind}: "
        + ", ".join(f"{o.output} {_p(o.test_accuracy)} @ {_p(o.relative_cost, 0)}" for o in r.outputs)
        for r in result.rows
    ]
    out = [("Accuracy (test) and cost (relative to the CNN) of every output:", outputs)]
    out.append(
        (
            "Wall time of the stages (training: the stage's runs over every call, data loading, model building, "
            "compilation and checkpoints included, in brackets the part spent in epochs with validation; "
            "analysis: records + report, or, for an analysis made in a background process while the next "
            "stage trained, the records and the wait for it, its own time beside):",
            _stage_times(result),
        )
    )
    runs = [
        f"{r.arch}: " + ", ".join(f"{k} ({_runtime_text(v)})" for k, v in r.stage_runtime.items())
        for r in result.first_row_per_arch()
        if r.stage_runtime
    ]
    if runs:
        out.append(
            ("How each stage trained (precision, compilation; a resumed stage keeps what it started with):", runs)
        )
    if result.call_seconds is not None:
        lead = (
            f"This call of `reproduce` took {result.call_seconds:.1f} s of wall time so far (data loading "
            "and model building included; stages kept from an earlier call cost it nothing)."
        )
        out.append((lead, []))
    if result.compiled_ahead:
        out.append((_compiled_ahead_text(result.compiled_ahead), []))
    medians = [
        f"{r.arch} {r.kind} {r.median_epoch_seconds:.2f} s" for r in result.rows if r.median_epoch_seconds is not None
    ]
    out.append(("Median epoch time: " + ", ".join(medians), []))
    claims = [f"{k.replace('_', ' ')}: {v}" for k, v in result.paper_claims.items()]
    out.append(("The paper's claims (spec sections 7-9):", claims))
    return out


def _stage_times(result: Reproduction) -> list[str]:
    """Each architecture's stages' wall time (in epochs, in the background) and their total."""
    stages = []
    for r in result.first_row_per_arch():
        if not r.stage_seconds:
            continue
        total = sum(r.stage_seconds.values())
        in_epochs, beside = r.stage_epoch_seconds, r.stage_background_seconds
        stages.append(
            f"{r.arch}: "
            + ", ".join(
                f"{k} {v:.1f} s"
                + (f" ({in_epochs[k]:.1f} s)" if k in in_epochs else "")
                + (f" (+{beside[k]:.1f} s in the background)" if k in beside else "")
                for k, v in r.stage_seconds.items()
            )
            + f"; total {total:.1f} s ({total / 60:.1f} min)"
        )
    return stages


def _compiled_ahead_text(rows: list[JSONObject]) -> str:
    return (
        "Training steps compiled in a background process, in training order (a stage trains eagerly "
        "until its step is in the compiler's cache, then loads it): "
        + ", ".join(
            f"{r['stage']} "
            + (f"in {r['seconds']:.1f} s" if r["compiled"] else f"not ({r.get('error', 'it would not compile')})")
            + (f" ({r['eager_epochs']} epochs eager meanwhile)" if r.get("eager_epochs") else "")
            for r in rows
        )
        + "."
    )


def _runtime_text(rt: JSONObject | None) -> str:
    if not rt:
        return "(not recorded)"
    how = f"{rt.get('device')}, {rt.get('precision')}"
    if rt.get("compile"):
        how += ", compiled" + (" (CUDA graphs)" if rt.get("cuda_graphs") else "")
    if rt.get("ddp"):
        how += f", {rt.get('world_size', '?')} processes (DDP)"
    return how


def _engine_text(e: EnginePoint | None) -> str:
    if not e:
        return "n/a"
    kind = "per-IC q " + " ".join(f"{q:.3g}" for q in e.thresholds) if e.per_ic else f"q={e.thresholds[0]:.4g}"
    return f"{_p(e.test_accuracy, 2)} / {_p(e.test_relative_cost)} ({e.rule}, {kind})"


def reproduction_html(result: Reproduction) -> str:
    """The reproduction table as one HTML page linking every run's report."""
    rows = []
    for r in result.rows:
        cal, ref = r.calibrated, r.reference_protocol
        link = f'<a href="{html.escape(r.report)}">report</a>'
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    html.escape(r.arch),
                    html.escape(r.kind),
                    _p(r.final_test_accuracy, 2),
                    f"{_p(cal.test_accuracy, 2)} / {_p(cal.test_relative_cost)}",
                    html.escape(_engine_text(r.engine)),
                    f"{_p(ref.test_accuracy, 2)} / {_p(ref.test_relative_cost)}",
                    _p(r.early_share),
                    _p(r.destructive_share),
                    f"{_auc(r.confusion_auroc)} / {_auc(r.confidence_auroc)}",
                    link,
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "network",
            "SDN",
            "final acc.",
            "early exit (val-calibrated): acc. / cost",
            "what predict uses (val-chosen): acc. / cost",
            "reference protocol (test-chosen): acc. / cost",
            "right at some IC",
            "destructive share",
            "AUROC confusion / confidence",
            "",
        )
    )
    sections = "".join(
        f"<p>{html.escape(lead)}</p>"
        + (f"<ul>{''.join(f'<li>{html.escape(i)}</li>' for i in items)}</ul>" if items else "")
        for lead, items in _reproduction_sections(result)
    )
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>shallowdeep reproduction</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}</style></head><body>"
        f"<h1>Reproduction on {html.escape(result.data)} ({html.escape(result.device)})</h1>"
        f"<p>{html.escape(result.note)}.</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
        f"</tbody></table>{sections}</body></html>\n"
    )
