"""The report's figures: SVG charts and PNG image grids of typed analyses, base64 for embedding."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from ..analysis import Calibration, Confusion, Overthinking, RunAnalysis, Sweep
from ..analysis.record import ExitRecord
from ..core.io import JSONObject
from ..core.outputs import output_names

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


def fig_latency(analysis: RunAnalysis) -> str:
    """Accuracy against expected latency on the profiled device (measured stage times) beside
    accuracy against FLOPs, the latency-calibrated point marked on both."""
    lat = analysis.engine.latency  # type: ignore[union-attr]
    plt = _plt()
    fig, (a_ms, a_fl) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for split, style in (("val", "--"), ("test", "-")):
        c = lat.curves[split]
        a_ms.plot(c.relative_cost * lat.plain_ms, c.accuracy * 100, style, lw=1.4, label=f"{split}")
        f = analysis.curves[split]
        a_fl.plot(f.relative_cost, f.accuracy * 100, style, lw=1.4, label=f"{split}")
    stat = lat.budget.statistic
    shown = lat.test.mean_ms if stat == "mean" else lat.test.percentile_ms
    a_ms.scatter([shown], [lat.test.accuracy * 100], c="tab:red", zorder=4, label="chosen (test)")
    a_ms.axvline(lat.budget.ms, color="tab:red", lw=0.8, ls=":", label=f"budget {lat.budget.ms:g} ms")
    a_ms.set_xlabel(f"expected {stat} latency per input (ms)")
    a_fl.set_xlabel("average cost / plain CNN cost (FLOPs)")
    for ax in (a_ms, a_fl):
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
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
        for group, counts, color in (("correct", h.correct, "tab:blue"), ("wrong", h.wrong, "tab:red")):
            counts = np.asarray(counts, dtype=float)
            dens = counts / counts.sum() if counts.sum() else counts
            # one filled step outline per group, not a bar per bin: the same picture, a fraction of the
            # drawing time and of the SVG (two 50-bin panels: 200 patches)
            ax.stairs(dens, edges, fill=True, alpha=0.5, color=color, label=f"{group} ({int(counts.sum())})")
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
    dots = {"marker": "o", "ms": 4} if len(epochs) < 3 else {}  # one epoch is a point: a line alone shows nothing
    for i, name in enumerate(output_names(k)):
        a1.plot(x, [100 * e["val_acc"][i] for e in epochs], lw=1.4, label=name, **dots)
    a1.set_xlabel("epoch")
    a1.set_ylabel("validation accuracy (%)")
    a1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    a2.plot(x, [e["train_loss"] for e in epochs], color="k", lw=1.4, **dots)
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


def fig_exits(cal: Calibration, names: list[str], title: str) -> str:
    """Where inputs leave at ``cal``'s thresholds (named in ``title``), validation and test (share of inputs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.set_title(title)
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


def fig_shifted_exits(analysis: RunAnalysis, names: list[str]) -> str:
    """Where inputs leave at the engine's thresholds: the clean test split beside every attacked and
    corrupted copy of it (severities 3 and 5 of a corruption, to keep the bars readable) and every
    unfamiliar set."""
    plt = _plt()
    groups = [("clean test", analysis.shifts[0].clean if analysis.shifts else analysis.unfamiliar[0].test)]
    for x in analysis.shifts:
        if x.kind == "attack" or x.setting.get("severity") in (3, 5):
            groups.append((x.name.removeprefix("test+"), x.shifted))
    groups += [(f"unfamiliar: {u.source}"[:40], u.unfamiliar) for u in analysis.unfamiliar]
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    x, width = np.arange(len(names)), 0.8 / len(groups)
    for j, (label, summary) in enumerate(groups):
        ax.bar(x + (j - (len(groups) - 1) / 2) * width, 100 * np.asarray(summary.exit_shares), width, label=label)
    ax.set_xticks(x, [n if n != "final" else "no IC exit" for n in names])
    ax.set_xlabel("where inputs leave (the thresholds predict uses)")
    ax.set_ylabel("inputs (%)")
    ax.legend(frameon=False, fontsize=6.5, ncol=2)
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


def _exits_shown(analysis: RunAnalysis) -> tuple[Calibration, str]:
    """The exits the report draws: those ``predict`` makes (the engine's rule and thresholds), else
    the one calibrated threshold; with the title that names them."""
    if analysis.engine is not None:
        e = analysis.engine
        qs = e.calibration.thresholds or [e.calibration.threshold]
        shown = f"per-IC thresholds {' '.join(f'{q:.3g}' for q in qs)}" if len(qs) > 1 else f"q={qs[0]:.4g}"
        return e.calibration, f"as predict exits: {e.rule.label}, {shown}"
    return analysis.calibrated, f"one threshold for every IC: q={analysis.calibrated.threshold:.4g}"


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
        shown, title = _exits_shown(analysis)
        figs["exits"] = fig_exits(shown, names, title)
        figs["overthinking"] = fig_overthinking(o)
        figs["destructive"] = fig_destructive(o)
    if analysis.rules is not None:
        figs["rules"] = fig_rules(analysis.rules)
    if analysis.engine is not None and analysis.engine.latency is not None:
        figs["latency"] = fig_latency(analysis)
    if analysis.shifts or analysis.unfamiliar:
        figs["shifted_exits"] = fig_shifted_exits(analysis, names)
    if o.examples_only_first:
        figs["only_first"] = fig_image_grid(images, [("IC 1", o.examples_only_first)], test, classes, [0])
    return figs


# --------------------------------------------------------------------------------------------------
# the page


def methods_svg(rows: list[Any]) -> bytes:
    """``shallowdeep compare``'s chart (the SVG file's bytes): the test accuracy-cost curve of every
    run (colour) under every rule (line style), with the points the fixed costs chose on validation."""
    _style()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    runs = list(dict.fromkeys(r.run for r in rows))
    rules = list(dict.fromkeys(r.rule for r in rows))
    styles = ["-", "--", ":", "-."]
    for r in rows:
        color, ls = f"C{runs.index(r.run) % 10}", styles[rules.index(r.rule) % len(styles)]
        c = r.curve
        order = np.argsort(c.relative_cost)
        label = f"{r.run} ({r.mode}), {r.rule}: area {r.tradeoff.auc:.3f}"
        ax.plot(c.relative_cost[order], 100 * c.accuracy[order], ls=ls, lw=1.2, color=color, label=label)
        pts = [(p.test_cost, 100 * p.test_accuracy) for p in r.tradeoff.points if p.test_accuracy is not None]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=color, zorder=3)
    for b in (0.25, 0.5, 0.75, 1.0):
        ax.axvline(b, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("average cost / plain CNN cost (dots: the fixed costs' thresholds, chosen on validation)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
