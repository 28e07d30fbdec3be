"""The report as files: one self-contained HTML page, Markdown with the charts as PNGs beside it, CSVs."""

import base64
import html
import re
from pathlib import Path

import pandas as pd

from ablation.core.config import CONFIG_FIELDS
from ablation.report import figures
from ablation.report.sections import Report

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; font-size: .9em; color: #444; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; }
"""

# Runs on load in the browser and shows nothing: it counts the figures that decoded into two
# attributes of <body>, which a headless browser's dump of the page (the Chromium test) can read.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", String(loaded.length));
  document.body.setAttribute("data-images-total", String(images.length));
});
"""

NUMBER = re.compile(r"^[+\-−]?\d[\d.,/]*(%|\s?(pp|s|k|M|G)\b)?(\s.*)?$")  # right-aligned table cells


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, figures as data: URIs, no external reference."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(report.title)}: report</title><style>{CSS}</style></head><body>",
             f"<h1>{e(report.title)}</h1>", '<dl class="meta">']
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in report.meta]
    parts.append("</dl>")
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{e(section.text)}</p>")
        parts += [f'<p class="note">{e(note)}</p>' for note in section.notes]
        if section.table is not None and len(section.table):
            parts.append(_html_table(section.table))
        for chart in section.figures:
            data = base64.b64encode(chart.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(chart.caption)}" '
                         f'data-name="{e(chart.name)}"><figcaption>{e(chart.caption)}</figcaption></figure>')
    parts.append(f"<h2>Runs</h2><p>{e(_runs_text(report))}</p>")
    parts.append(f"<script>{IMAGE_CHECK}</script></body></html>")
    return "\n".join(parts)


def _html_table(table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False):
        cells = "".join(f'<td class="num">{e(str(v))}</td>' if NUMBER.match(str(v)) else f"<td>{e(str(v))}</td>"
                        for v in values)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_markdown(report: Report) -> str:
    """The same tables; the figures as PNG files beside it."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.meta]
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        lines += [f"> **Note:** {note}\n" for note in section.notes]
        if section.table is not None and len(section.table):
            lines += [_markdown_table(section.table), ""]
        for chart in section.figures:
            lines += [f"![{chart.caption}]({chart.name})", "", f"*{chart.caption}*", ""]
    lines += ["", "## Runs", "", _runs_text(report), ""]
    return "\n".join(lines)


def _markdown_table(table) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in table.itertuples(index=False)]
    return "\n".join(lines)


def _runs_text(report: Report) -> str:
    text = (f"runs.csv beside this report holds the experiment's {len(report.runs)} runs, one row each, the columns "
            "named as the config and the metrics (seed: the training seed; split_seed: the seed of the "
            "train / validation / test split).")
    if "ladder_summary.csv" in report.csvs:
        text += " ladder_summary.csv holds the ladder's per-step summary over seeds, as numbers."
    return text


def runs_csv(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: who it is, then the config in its own order, the metrics, the tags."""
    first = [c for c in ("run_id", "run_name", "parent_run_id", "kind", "step", "status", "start_time", "end_time")
             if c in runs.columns]
    config = [c for c in CONFIG_FIELDS if c in runs.columns]
    rest = sorted(c for c in runs.columns if c not in first and c not in config
                  and c not in ("experiment_id", "artifact_uri"))
    return runs.sort_values("start_time")[first + config + rest]


def write(report: Report, folder: Path):
    """report.html, report.md, the charts as PNGs, runs.csv and the report's other tables, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in figures.NAMES:  # a chart absent this time (no search yet) must not linger from an earlier report
        (folder / name).unlink(missing_ok=True)
    for section in report.sections:
        for chart in section.figures:
            (folder / chart.name).write_bytes(chart.png)
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    runs_csv(report.runs).to_csv(folder / "runs.csv", index=False)
    for name, table in report.csvs.items():
        table.to_csv(folder / name, index=False)
