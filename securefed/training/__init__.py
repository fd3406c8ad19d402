"""securefed.training (see securefed/README.md)."""
