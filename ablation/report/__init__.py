"""Comparison reports: what the ladder and the search recorded, as HTML, Markdown and CSV. Never trains.

    python -m ablation.report                                      # studies/assignment.toml's latest ladder
    python -m ablation.report --study studies/assignment.toml --out reports/assignment
    python -m ablation.report --experiment assignment --data ../shared/data/cifar-10-python.tar.gz

Writes, under reports/<study>/ by default: report.html (one self-contained file: figures as data
URIs, inline CSS, opens offline), report.md (the same tables, the figures as PNG files beside it)
and runs.csv (one row per run of the experiment, columns named as the config and the metrics).

The package, data flowing one way:
    gather   reads the stores (MLflow through `ablation.tracking`, the search's Optuna storage) into
             plain DataFrames and the records of `found`; with `predictions` (the runs' test predictions)
             the only part that reads, and it never writes;
    tables   numbers first (tested against the store), display strings second;
    figures  matplotlib charts, rendered to PNG bytes;
    sections what the report shows, in order: tables and charts from what gather read;
    render   the HTML page, the Markdown file and the CSVs.
This module stays light (no pandas, matplotlib or MLflow at import): `python -m ablation.report --help`
and the ladder's import of it cost nothing until a report is written.
"""

from pathlib import Path

from ablation.cli import DEFAULT_STUDY
from ablation.report.errors import ReportError  # noqa: F401  (the package's public error)


def write_report(study_name_or_path=DEFAULT_STUDY, *, experiment=None, out=None, log=False, data=None) -> Path:
    """Write report.html, report.md (+ PNGs) and the CSVs; returns the path of report.html.

    `study_name_or_path`: a study file, or a name (studies/NAME.toml, a shipped study, else an experiment name);
    `experiment`: the MLflow experiment (default: the study's name); `out`: the folder (default
    reports/<study>/); `data`: CIFAR-10 for re-deriving test labels (default $ABLATION_DATA);
    `log`: also log the folder under `report/` in the study's latest parent run (the report only
    reads the store unless asked to). Raises ReportError when there is nothing to report, StoreError when
    the tracking store cannot be opened (the commands check it first with `tracking.check_store`).
    """
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read is noise
    from ablation import tracking
    from ablation.report import gather, render, sections  # the heavy part: pandas, matplotlib, MLflow

    found = gather.gather(study_name_or_path, experiment, data)
    report = sections.assemble(found, log=log)
    folder = Path(out) if out is not None else Path("reports") / found.study.name
    render.write(report, folder)
    if log and report.log_run_id is not None:
        tracking.log_report(folder, report.log_run_id)
    return folder / "report.html"

