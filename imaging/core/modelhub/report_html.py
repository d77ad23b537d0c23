"""A validation report as one self-contained HTML file, for the quality file a hospital keeps.

Tables first (what was validated, on which locked set, against which active model and
margins, the verdict, then every measure side by side), then the figures, drawn by
Plotly embedded in the file, so it opens anywhere offline and later. Every value is
escaped; nothing is fetched.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imaging.core.modelhub.figures import report_figures

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#1a1a1a}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}th,td{border:1px solid #bbb;padding:0.25rem 0.5rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding:0.25rem 0}
.pass{color:#006400;font-weight:600}.fail{color:#b00020;font-weight:600}.figure{height:420px}
code{font-size:0.85em;word-break:break-all}
"""


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(
    caption: str, headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1
) -> str:
    head = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for n, value in enumerate(row):
            tag = "td class='num'" if n >= numeric_from else "td"
            cells.append(f"<{tag}>{html.escape(str(value))}</{tag.split()[0]}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_rows(
    metrics: Mapping[str, Any],
    active: Mapping[str, Any] | None,
    paired: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[list[str]]:
    """(measure, candidate, active) rows of the headline measures, per organ too, and the
    median volume error on the lesions both versions found (what the promotion rule
    compares, `compare.paired_volume_errors`) where ``paired`` has it."""
    rows = []
    groups = [("all organs", metrics["overall"], (active or {}).get("overall"))]
    groups += [(organ, m, (active or {}).get("by_organ", {}).get(organ))
               for organ, m in metrics["by_organ"].items()]  # fmt: skip
    measures = (("sensitivity (>= 5 mm)", "sensitivity", pct),
                ("false positives per study", "fp_per_study", num),
                ("Dice (mean, detected)", "dice_mean", num),
                ("median volume error (>= 0.5 ml)", "volume_error_median", pct),
                ("median longest-diameter error (mm)", "diameter_error_mm_median", num))  # fmt: skip
    for group, new, old in groups:
        for label, key, fmt in measures:
            rows.append([f"{group}: {label}", fmt(new.get(key)), fmt(old.get(key)) if old else "—"])
        both = (paired or {}).get("overall" if group == "all organs" else group)
        if both and old:
            rows.append([f"{group}: median volume error on the {both['lesions']} lesion(s) both found",
                         pct(both["candidate"]), pct(both["active"])])  # fmt: skip
    cal, old_cal = metrics["calibration"], (active or {}).get("calibration")
    rows.append(["confidence: expected calibration error", num(cal["ece"], 3),
                 num(old_cal["ece"], 3) if old_cal else "—"])  # fmt: skip
    rows.append(
        [
            "confidence: Brier score",
            num(cal["brier"], 3),
            num(old_cal["brier"], 3) if old_cal else "—",
        ]
    )
    sec, old_sec = metrics["seconds_per_study"], (active or {}).get("seconds_per_study")
    rows.append(
        [
            "seconds per study (median)",
            num(sec["median"], 1),
            num(old_sec["median"], 1) if old_sec else "—",
        ]
    )
    return rows


def report_html(
    *, report: Mapping[str, Any], active: Mapping[str, Any] | None, plotly_js: str
) -> str:
    """The report (see `figures.report_figures` for the shapes) as a complete HTML page."""
    model, vset, comparison = report["model"], report["set"], report["comparison"]
    if comparison.get("refusals"):
        texts = "; ".join(comparison.get("failures") or comparison["refusals"])
        verdict = f"<p class='fail'>Does not pass: {html.escape(texts)}</p>"
    elif not comparison.get("active"):
        verdict = "<p>This was the active model when validated: nothing to compare with.</p>"
    elif comparison.get("passed"):
        verdict = "<p class='pass'>No regression beyond the margins: may be promoted.</p>"
    else:
        texts = "; ".join(r["text"] for r in comparison.get("regressions", []))
        verdict = f"<p class='fail'>Not promotable: {html.escape(texts)}</p>"
    notes = "".join(f"<p>{html.escape(str(n))}</p>" for n in comparison.get("notes", []))
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Validation report: "
        f"{html.escape(report['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Validation report: {html.escape(report['name'])}</h1>",
        f"<p>Made {html.escape(str(report.get('created_at', '')))} by "
        f"{html.escape(str(report.get('created_by') or 'unknown'))} in {report.get('seconds', 0):.0f} s.</p>",
        _table("Model", ["field", "value"], [
            ["name", model["name"]], ["version", model["version"]], ["format", model["format"]],
            ["status when validated", model.get("status", "")], ["SHA-256 (files)", model["sha256"]],
            ["labels", json.dumps(model["labels"])], ["input conventions", json.dumps(model["conventions"])],
        ], numeric_from=9),
        _table("Files", ["path", "SHA-256", "bytes"],
               [[f["path"], f["sha256"], f["bytes"]] for f in model.get("files", [])], numeric_from=2),
        _table("Locked validation set", ["field", "value"], [
            ["name", vset["name"]], ["checksum (generated studies)", vset["checksum"]],
            ["definition", json.dumps(vset["spec"])],
            ["site's reviewed studies", str(len(vset.get("site_studies", [])))],
        ], numeric_from=9),
        f"<h2>Verdict against the active model ({html.escape(comparison.get('active') or 'none')})</h2>",
        verdict,
        notes,
        _table("Margins", ["margin", "value"], [[k, v] for k, v in report["margins"].items()]),
        _table("Measures, side by side", ["measure", report["name"], comparison.get("active") or "active"],
               summary_rows(report["metrics"], active["metrics"] if active else None,
                            comparison.get("paired_volume_error"))),
    ]  # fmt: skip
    parts += _detail_tables(report, active)
    figures = report_figures(report, active)
    for fig_id in figures:
        parts.append(f"<div class='figure' id='{fig_id}'></div>")
    parts.append(f"<script>{plotly_js}</script><script>")
    for fig_id, figure in figures.items():
        parts.append(f"Plotly.newPlot({json.dumps(fig_id)}, {json.dumps(figure['data'])}, "
                     f"{json.dumps(figure['layout'])}, {{displaylogo: false}});")  # fmt: skip
    parts.append("</script></body></html>")
    return "\n".join(parts)


def _detail_tables(report: Mapping[str, Any], active: Mapping[str, Any] | None) -> list[str]:
    metrics = report["metrics"]
    old = {
        (r["organ"], r["side"], r["band"]): r
        for r in (active or {}).get("metrics", {}).get("by_organ_side_band", [])
    }
    bands = [[r["organ"], r["side"], r["band"], r["lesions"], r["detected"], pct(r["sensitivity"]),
              pct(old[(r["organ"], r["side"], r["band"])]["sensitivity"]) if (r["organ"], r["side"], r["band"]) in old else "—"]
             for r in metrics["by_organ_side_band"]]  # fmt: skip
    kinds = [
        [r["organ"], r["kind"], r["lesions"], r["detected"], pct(r["sensitivity"])]
        for r in metrics["by_kind"]
    ]
    cal = [[f"{b['low']:.1f}-{b['high']:.1f}", b["n"], num(b["mean_confidence"], 3), pct(b["share_true"])]
           for b in metrics["calibration"]["bins"]]  # fmt: skip
    studies = [[s["case_id"], s["source"], json.dumps(s.get("acquisition", {})), s["lesions_true"],
                s["detected"], s["false_positives"], num(s["seconds"], 1)] for s in report["per_study"]]  # fmt: skip
    return [
        _table("Sensitivity by organ, side and size band (all sizes)",
               ["organ", "side", "size (mm)", "lesions", "detected", "sensitivity", "active model"],
               bands, numeric_from=3),
        _table("Sensitivity by lesion kind", ["organ", "kind", "lesions", "detected", "sensitivity"], kinds,
               numeric_from=2),
        _table("Calibration of the confidence", ["confidence bin", "candidates", "mean confidence",
                                                 "true lesions"], cal),
        _table("Studies", ["study", "source", "acquisition", "true lesions", "detected",
                           "false positives", "seconds"], studies, numeric_from=3),
    ]  # fmt: skip
