"""securefed.secagg (see securefed/README.md)."""
