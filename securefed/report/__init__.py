"""securefed.report (see securefed/README.md)."""
