"""The run's report page: one self-contained HTML page of a run's analyses, one function per section.

It computes nothing: every number comes from a :class:`~shallowdeep.analysis.RunAnalysis` (typed
results). The page embeds its figures and links nothing outside itself, so it opens offline and can
be mailed as one file.
"""

from __future__ import annotations

import html
from typing import Any

from ..analysis import BackdoorResult, Calibration, Confusion, RuleComparison, RunAnalysis
from ..analysis.latency import LatencyCalibration
from ..core.words import counted
from ..runs.meta import RunMeta


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
        ["training time", f"{seconds:.1f} s over {counted(len(run_meta.epochs), 'epoch')} (validation included)"],
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
        _summary_section(analysis, engine),
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
    if analysis.engine is not None and analysis.engine.latency is not None:
        sections.append(_latency_section(analysis.engine.latency, fig))
    if analysis.shifts or analysis.unfamiliar:
        sections.append(_shifts_section(analysis, fig))
    if classes is not None and len(classes) <= 200:
        sections.append(_classes_section(analysis, classes))
    sections += list(extra_sections)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>" + "\n".join(x for x in sections if x) + "</body></html>\n"
    )


def _latency_section(lat: LatencyCalibration, fig: _Figures) -> str:
    """The thresholds chosen for a latency budget: expected latency on both splits, FLOPs' beside."""
    stat = lat.budget.statistic
    other = "p95" if stat == "mean" else stat
    rows = [
        [name, _pct(e.accuracy), f"{e.mean_ms:.4g}", f"{e.percentile_ms:.4g}", " ".join(map(str, e.exit_counts))]
        for name, e in (("validation", lat.val), ("test", lat.test), ("test, FLOP-calibrated", lat.flops))
    ]
    return (
        '<section id="latency"><h2>Thresholds for a latency budget</h2><p>The engine\'s thresholds were chosen '
        f"for the best validation accuracy whose expected {stat} latency fits {lat.budget.ms:g} ms, from the stage "
        f"times measured with {html.escape(lat.device)} (the network without ICs: {lat.plain_ms:.4g} ms). An "
        "input's expected time is the time of the stages it runs. Beside: the thresholds the FLOP-based "
        "calibration (the max-drop point) would run, on the same device.</p>"
        + _table(["split", "accuracy", "mean ms", f"{other} ms", "exits per output"], rows)
        + fig.img("latency", "accuracy against expected latency and against FLOPs")
        + "</section>"
    )


def _shifts_section(analysis: RunAnalysis, fig: _Figures) -> str:
    """Attacked, corrupted and unfamiliar inputs: what the calibrated exits cost and keep on them."""
    rows = [
        [
            x.name.removeprefix("test+"),
            x.kind,
            x.inputs,
            f"{_pct(x.shifted.accuracy)} ({_pct(x.shifted.final_accuracy)})",
            f"{100 * x.shifted.relative_cost:.1f}%",
            f"{_pct(x.clean.accuracy)} at {100 * x.clean.relative_cost:.1f}%",
            "n/a" if x.saving_kept is None else f"{100 * x.saving_kept:.0f}%",
            f"{'holds' if x.holds else 'broken'} (clean: {'holds' if x.clean_holds else 'broken'})",
        ]
        for x in analysis.shifts
    ]
    parts = ['<section id="shifts"><h2>Attacked, corrupted and unfamiliar inputs</h2>']
    if rows:
        bound = html.escape(analysis.shifts[0].bound)
        parts.append(
            "<p>The exits <code>predict</code> makes (the engine's rule and thresholds, chosen on clean "
            "validation inputs) on shifted copies of test inputs, beside the same inputs clean. Saving kept: "
            "the shifted inputs' saving over the clean ones'. Bound: the calibration's promise "
            f"({bound}), checked on the shifted inputs.</p>"
        )
        headers = ["inputs", "kind", "count", "early exits (final)", "cost", "clean", "saving kept", "bound"]
        parts.append(_table(headers, rows))
    if analysis.unfamiliar:
        parts.append(
            "<p>Unfamiliar inputs: what they cost and how well each output's confidence (max softmax) and the "
            "confusion metric tell them from the test split (AUROC; 0.5 is chance).</p>"
        )
        urows = [
            [
                u.source,
                u.inputs,
                f"{100 * u.unfamiliar.relative_cost:.1f}% (test {100 * u.test.relative_cost:.1f}%)",
                " ".join("n/a" if v is None else f"{v:.3f}" for v in u.confidence_auroc),
                "n/a" if u.confusion_auroc is None else f"{u.confusion_auroc:.3f}",
            ]
            for u in analysis.unfamiliar
        ]
        parts.append(_table(["source", "count", "cost", "confidence AUROC per output", "confusion AUROC"], urows))
    parts.append(fig.img("shifted_exits", "where clean, shifted and unfamiliar inputs exit"))
    return "".join(parts) + "</section>"


def _summary_section(analysis: RunAnalysis, engine: tuple[str, Calibration] | None) -> str:
    """The headline numbers a user acts on, before any detail: the final output's test accuracy and,
    for an SDN, what ``predict``'s early exits keep of it and at what cost, and how often an IC was
    already right."""
    final = analysis.outputs[-1]
    items = [f"final output: {_pct(final.test_accuracy)} test accuracy at {final.gflops:.4g} GFLOPs"]
    if analysis.num_outputs == 1:
        items.append("a plain CNN: no ICs, so no early exits or overthinking (train its ICs with ic-only)")
    else:
        if engine is not None and engine[1].test is not None:
            rule, ec = engine
            items.append(
                f"early exits as <code>predict</code> runs them ({html.escape(rule)} rule, "
                f"{'per-IC thresholds ' if ec.thresholds is not None else 'threshold '}"
                f"{html.escape(_thresholds_text(ec))}): {_pct(ec.test.accuracy)} test accuracy at "
                f"{100 * ec.test.relative_cost:.1f}% of the CNN's cost"
            )
        o = analysis.overthinking
        items.append(
            f"{_pct(o.early_share)} of test inputs are right at some IC before the final output; "
            f"{counted(o.destructive_union_count, 'input')} some IC gets right the final output gets wrong"
        )
    return '<section id="summary"><h2>Summary</h2><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></section>"


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
        + fig.img("exits", "where inputs leave as predict exits them")
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
        f"Destructive overthinking: {counted(o.destructive_union_count, 'input')} some IC gets right and the final "
        f"output gets wrong, {_pct(o.destructive_union_share_of_final_errors)} of the final output's "
        f"{counted(o.final_errors, 'error')}.</p>"
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
        "+T: on logits divided by one temperature per output, fitted on the validation split (NLL). +E: on "
        "Zero Time Waste's geometric ensemble of the outputs so far (weights and class biases fitted on the "
        "validation split by maximum likelihood; ztw = max_softmax+E). Each "
        f"threshold is chosen on the validation split (cheapest within {100 * cal.rule.get('max_drop', 0):.1f} "
        "points of the final output) and reported on the test split.</p>"
        + _table(head, rows)
        + fig.img("rules", "accuracy against cost of every exit rule")
        + _tradeoff_table(rc)
        + "<h3>Temperature scaling</h3>"
        + _table(["output", "temperature (fitted on val)", "ECE before (test)", "ECE after (test)"], temps)
        + "</section>"
    )


def _tradeoff_table(rc: RuleComparison) -> str:
    """Every rule at 25/50/75/100 % of the CNN's cost and its curve's area (the way ZTW's tables read)."""
    rows = []
    for r in rc.results:
        if r.tradeoff is None:
            continue
        cells = [_pct(p.test_accuracy) if p.test_accuracy is not None else "out of reach" for p in r.tradeoff.points]
        rows.append([r.rule.label, *cells, f"{r.tradeoff.auc:.4f}"])
    if not rows:
        return ""
    budgets = [f"test accuracy at {100 * p.budget:.0f}% cost" for p in rc.results[0].tradeoff.points]  # type: ignore[union-attr]
    return (
        "<h3>Accuracy at fixed costs</h3><p>Per rule, the threshold most accurate on the validation split "
        "within each cost (relative to the CNN's), its test accuracy, and the area under the test "
        "accuracy-cost curve (best accuracy reachable at each cost, 0 below the cheapest threshold, "
        "costs 0 to 1).</p>" + _table(["rule", *budgets, "area under the curve"], rows)
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
            f"<p>Destructive overthinking on triggered inputs: {counted(d['union_count'], 'input')} some IC gets right "
            f"and the final output gets wrong ({_pct(d['union_share_of_final_errors'])} of its errors there); per IC "
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
        f"<p>{counted(count_total, html.escape(split) + ' input')} {'is' if count_total == 1 else 'are'} right at IC 1 "
        "and wrong at the final output; the first "
        f"{shown}: Grad-CAM, guided backprop and guided Grad-CAM of IC 1's prediction on the network cut after "
        "IC 1, beside the same for the final output's prediction.</p>"
        f'<figure id="fig-explanations"><img alt="explanations" src="data:image/png;base64,{png_base64}"></figure>'
        "</section>"
    )


# --------------------------------------------------------------------------------------------------
# the reproduction table
