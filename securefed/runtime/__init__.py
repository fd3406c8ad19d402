"""securefed.runtime (see securefed/README.md)."""
