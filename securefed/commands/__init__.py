"""The `securefed` subcommands, one module each (registered by securefed.cli)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, else a usage error (exit 2) before any work — `--threads-per-holder 0` was a
    traceback after the data with a half-made run directory, `corpus build --max-sources 0` an empty corpus."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v
