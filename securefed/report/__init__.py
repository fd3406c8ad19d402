"""securefed.report: renders RUN_DIR/report from the run directory's files only (see render.py)."""

from securefed.report.render import ReportInputError, load_run, render_report

__all__ = ["render_report", "load_run", "ReportInputError"]
