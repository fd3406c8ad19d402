"""The channel interface: how the Coordinator's stage messages reach holders and their replies come back.

The round is written once (coordinator.py, holder.py); a channel only moves bytes:

    open(welcome_for, run_id)      make holders reachable; each gets welcome_for(holder_id)
    available(r, want, timeout)    holders able to take part in round r
    send(r, stage, outbox)         one-way messages (stage MODEL)
    exchange(r, stage, outbox, deadline) -> {holder: reply bytes}
    collect(r, stage, outbox, deadline, sink) -> {holders whose reply the sink committed}
    end_round(r)                   the round is over for everyone still in it
    end_run(why, after_round)      the run is over (finished | budget | too_few | stopped): holders that
                                   ask again are told why and exit (protocols/transport.md §5.4)
    close()

A holder that does not answer by the deadline, answers garbage or disconnects is simply absent from
the result: for secure aggregation that is a dropout (protocols/secagg.md §8). ``collect`` streams
large replies (a masked input, a plain update, CKKS ciphertexts) into a per-holder sink
(transport.stream.Sink) instead of returning them: the masked-input sink folds each holder's words
into the round's ring sum as they arrive, so the coordinator's memory is O(P) whatever the cohort.

Implementations: inproc.InProcChannel (holders in this process, called directly), grpc.GrpcChannel
(holders in other processes or institutions, gRPC + mutual TLS), ray.RayChannel (one Ray actor per
holder, each stage sent to all of them at once). Every channel counts the bytes it
carried in the round (``bytes_up``, ``bytes_down``; reset by ``available``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping

__all__ = ["Channel", "SinkFactory", "deliver"]

log = logging.getLogger("securefed.channel")

SinkFactory = Callable[[int], object]   # holder id -> transport.stream.Sink for its reply


def deliver(sink: SinkFactory, h: int, reply: bytes) -> bool:
    """A whole reply (channels that receive it in one piece) into holder h's sink, as a stream would;
    False (logged) if the sink refuses it — wrong length, sender or ring, or the stage closed."""
    s = sink(h)
    try:
        s.write(0, reply)
        s.commit()
    except ValueError as e:     # FrameError
        log.warning("holder %d: reply refused: %s", h, e)
        s.abort()
        return False
    return True


class Channel(ABC):
    bytes_up: int = 0
    bytes_down: int = 0

    @abstractmethod
    def open(self, *, welcome_for: Callable[[int], bytes], run_id: bytes) -> None: ...

    @abstractmethod
    def available(self, round_index: int, *, want: int, timeout: float) -> list[int]: ...

    @abstractmethod
    def send(self, round_index: int, stage: int, outbox: Mapping[int, bytes]) -> None: ...

    @abstractmethod
    def exchange(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                 max_reply: int) -> dict[int, bytes]: ...

    @abstractmethod
    def collect(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                sink: SinkFactory, max_reply: int) -> set[int]: ...

    @abstractmethod
    def end_round(self, round_index: int) -> None: ...

    def end_run(self, *, why: str, after_round: int, expect: Collection[int] = (), within: float = 0.0) -> None:  # noqa: B027 - optional
        """Channels whose holders are driven by the coordinator (in-process, Ray) have nothing to tell. ``expect``:
        holders to wait for (≤ ``within`` s) to be told, though none has asked yet (a resumed run that ended at once)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass
