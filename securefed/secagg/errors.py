"""Exceptions of the secure-aggregation protocol."""

from __future__ import annotations

__all__ = ["SecAggAborted", "IdentityInUse", "MessageError", "UnexpectedMessage"]


class SecAggAborted(RuntimeError):
    """The round was aborted (a MUST rule failed or too few holders survived); nothing was output."""


class IdentityInUse(SecAggAborted):
    """C2: the key roster holds an advertisement that verifies under this client's own identity key but is not the one
    it sent — another process holds that key and takes part under this client's id (protocols/secagg.md §6.1)."""


class MessageError(ValueError):
    """A serialized message is malformed (protocols/secagg.md §7)."""


class UnexpectedMessage(ValueError):
    """A well-formed message arrived in a stage that does not accept it; state is unchanged."""
