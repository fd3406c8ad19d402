"""securefed.transport (see securefed/README.md)."""
