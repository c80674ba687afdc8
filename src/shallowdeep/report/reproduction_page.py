"""The reproduction table (:class:`~shallowdeep.reproduction_table.Reproduction`) as markdown and as
one HTML page linking every run's report."""

from __future__ import annotations

import html

from ..core.io import JSONObject
from ..core.words import counted
from ..reproduction_table import EnginePoint, Reproduction


def _p(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _auc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def reproduction_markdown(result: Reproduction) -> str:
    """The reproduction table (``shallowdeep reproduce``) as markdown."""
    lines = [
        f"# Reproduction on {result.data} ({result.device})",
        "",
        f"Epochs: {_epochs_text(result)}; {result.note}.",
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
    methods = _methods_rows(result)
    if methods:
        lines += ["", METHODS_LEAD, "", "| " + " | ".join(METHODS_HEAD) + " |", "|---" * len(METHODS_HEAD) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in methods]
    for lead, items in _reproduction_sections(result):
        lines += ["", lead] + ([""] + [f"- {i}" for i in items] if items else [])
    return "\n".join(lines) + "\n"


_STAGE_NAMES = {"cnn": "CNN", "ic-only": "IC-only", "sdn": "SDN"}


def _epochs_text(result: Reproduction) -> str:
    """Each stage's epochs (the reproduction records those of its methods' stages)."""
    return ", ".join(f"{_STAGE_NAMES.get(k, k)} {n}" for k, n in result.epochs.items())


METHODS_LEAD = (
    "Methods side by side, as ZTW's tables read: test accuracy at 25/50/75/100 % of the CNN's cost (each "
    "threshold chosen on validation) and the area under the test accuracy-cost curve, under max softmax "
    "and under ZTW's geometric ensemble (max_softmax+E, fitted on validation):"
)
METHODS_HEAD = ("network", "method", "exit rule", "final acc.", "25 %", "50 %", "75 %", "100 %", "area")
SHOWN_RULES = ("max_softmax", "max_softmax+E")


def _methods_rows(result: Reproduction) -> list[list[str]]:
    """The cells of the methods table: each row's SDN under each of :data:`SHOWN_RULES` it was analyzed with."""
    out = []
    for r in result.rows:
        for t in r.tradeoffs:
            if t.rule in SHOWN_RULES:
                at = [_p(a, 2) for a in t.test_accuracy]
                out.append([r.arch, r.kind, t.rule, _p(r.final_test_accuracy, 2), *at, f"{t.auc:.4f}"])
    return out


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
    if result.schedule is not None:
        out.append(_schedule_section(result))
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


def _schedule_section(result: Reproduction) -> tuple[str, list[str]]:
    """When each stage and analysis of this call ran (seconds from the start), where, beside which."""
    lead = (
        f"Stages run at once, at most {result.max_concurrent}, each in its own process "
        "(this call; seconds from its start):"
    )
    items = [
        f"{t.name} on {t.slot}: {t.started:.1f}-{t.ended:.1f} s ({t.seconds:.1f} s)"
        + (f", beside {', '.join(others)}" if others else ", alone")
        for t, others in result.ran_together()
    ]
    items += [f"{t.name}: {t.status} ({t.why})" for t in result.schedule or [] if t.status in ("failed", "not run")]
    return lead, items or ["nothing to run: every stage and analysis was kept"]


def _compiled_ahead_text(rows: list[JSONObject]) -> str:
    return (
        "Training steps compiled in a background process, in training order (a stage trains eagerly "
        "until its step is in the compiler's cache, then loads it): "
        + ", ".join(
            f"{r['stage']} "
            + (f"in {r['seconds']:.1f} s" if r["compiled"] else f"not ({r.get('error', 'it would not compile')})")
            + (f" ({counted(r['eager_epochs'], 'epoch')} eager meanwhile)" if r.get("eager_epochs") else "")
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
    methods = _methods_rows(result)
    if methods:
        cells = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in row)}</tr>" for row in methods)
        heads = "".join(f"<th>{html.escape(h)}</th>" for h in METHODS_HEAD)
        methods_html = (
            f"<p>{html.escape(METHODS_LEAD)}</p><table><thead><tr>{heads}</tr></thead><tbody>{cells}</tbody></table>"
        )
    else:
        methods_html = ""
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
        f"</tbody></table>{methods_html}{sections}</body></html>\n"
    )
