"""The in-process channel: holders live in this process and are called directly, one after another.

It carries exactly the bytes the gRPC channel carries (encoded messages in, encoded replies out,
large replies through the same sinks), so a run gives the same model and ledgers on both channels
(tests/federation/test_conformance.py). Deadlines do not apply: a holder answers or it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from securefed.federation.channel import Channel, SinkFactory, deliver
from securefed.federation.holder import Holder, HolderStateError, PolicyRefused
from securefed.federation.messages import MessageError

__all__ = ["InProcChannel"]

log = logging.getLogger("securefed.channel.inproc")


class InProcChannel(Channel):
    def __init__(self, holders: Mapping[int, Holder], *, progress=None) -> None:
        self.holders = dict(holders)
        self.gone: set[int] = set()          # holders that left the run (their policy refused it)
        self.progress = progress
        self.bytes_up = self.bytes_down = 0

    def open(self, *, welcome_for: Callable[[int], bytes], run_id: bytes) -> None:
        for h, holder in self.holders.items():
            try:
                holder.welcome(welcome_for(h))
            except (PolicyRefused, HolderStateError, MessageError) as e:
                log.error("holder %d leaves the run: %s", h, e)
                self.gone.add(h)

    def available(self, round_index: int, *, want: int, timeout: float) -> list[int]:
        self.bytes_up = self.bytes_down = 0
        return sorted(set(self.holders) - self.gone)

    def _call(self, r: int, stage: int, h: int, payload: bytes, max_reply: int) -> bytes | None:
        if h in self.gone or h not in self.holders:
            return None
        self.bytes_down += len(payload)
        reply = self.holders[h].handle(r, stage, payload)
        if reply is None:
            return None
        if len(reply) > max_reply:
            log.warning("holder %d: reply of %d bytes exceeds %d; refused", h, len(reply), max_reply)
            return None
        self.bytes_up += len(reply)
        return reply

    def _each(self, outbox: Mapping[int, bytes], label: str):
        items = sorted(outbox.items())
        if self.progress is not None and len(items) > 1:
            return self.progress.iter(items, label)
        return items

    def send(self, round_index: int, stage: int, outbox: Mapping[int, bytes]) -> None:
        for h, payload in self._each(outbox, f"round {round_index}: local training"):
            self._call(round_index, stage, h, payload, 0)

    def exchange(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                 max_reply: int) -> dict[int, bytes]:
        out = {}
        for h, payload in sorted(outbox.items()):
            reply = self._call(round_index, stage, h, payload, max_reply)
            if reply is not None:
                out[h] = reply
        return out

    def collect(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                sink: SinkFactory, max_reply: int) -> set[int]:
        done = set()
        for h, payload in sorted(outbox.items()):
            reply = self._call(round_index, stage, h, payload, max_reply)
            if reply is not None and deliver(sink, h, reply):
                done.add(h)
        return done

    def end_round(self, round_index: int) -> None:
        for h, holder in self.holders.items():
            if h not in self.gone:
                holder.end_round(round_index)
