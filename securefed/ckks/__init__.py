"""securefed.ckks (see securefed/README.md)."""
