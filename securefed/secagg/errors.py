"""Exceptions of the secure-aggregation protocol."""

from __future__ import annotations

__all__ = ["SecAggAborted", "MessageError", "UnexpectedMessage"]


class SecAggAborted(RuntimeError):
    """The round was aborted (a MUST rule failed or too few holders survived); nothing was output."""


class MessageError(ValueError):
    """A serialized message is malformed (protocols/secagg.md §7)."""


class UnexpectedMessage(ValueError):
    """A well-formed message arrived in a stage that does not accept it; state is unchanged."""
