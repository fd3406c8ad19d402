"""securefed.report: renders RUN_DIR/report from the run directory's files only (see render.py)."""

from securefed.report.render import ReportInputError, ReportOutError, check_report_out, load_run, render_report

__all__ = ["render_report", "load_run", "check_report_out", "ReportInputError", "ReportOutError"]
