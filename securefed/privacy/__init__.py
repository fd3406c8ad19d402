"""securefed.privacy (see securefed/README.md)."""
