"""Progress never goes silent in a log file (heartbeat, tested with an injected clock), bars and lines
end at N/N, phases are timed, and data lines carry no logger source tags."""

import io
import time

import pytest

from securefed.progress import Progress, format_seconds
from securefed.training.data.progress import Steps


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Log(io.StringIO):
    """A non-terminal stream that remembers the (injected) time of every line written."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.times = clock, []

    def write(self, s: str) -> int:
        self.times.extend(self.clock() for _ in range(s.count("\n")))
        return super().write(s)

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@pytest.fixture
def clock():
    return Clock()


def _progress(clock, **kw) -> tuple[Progress, Log]:
    log = Log(clock)
    return Progress(stream=log, clock=clock, ticker=False, **kw), log


def test_heartbeat_fills_a_long_silent_call(clock):
    p, log = _progress(clock)
    assert not p.interactive  # a StringIO is not a terminal: lines, no bars
    with p.phase("baseline", total=2, label="centralized baseline") as task:
        assert p.tick() is False  # just started: nothing to add
        for _ in range(600):      # ten minutes inside one opaque call, the ticker checking every second
            clock.t += 1.0
            p.tick()
        task.advance()
        task.advance()
    times = [clock.t - 600] + log.times  # from the start of the phase
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 30.0, gaps
    beats = [line for line in log.lines() if "still working" in line]
    assert len(beats) >= 600 // 30
    assert beats[0].startswith("centralized baseline 0/2: still working (20 s in this step)")
    assert log.lines()[-1] == "centralized baseline: 2/2 done in 10 min 00 s"
    assert p.phase_seconds == {"baseline": 600.0}


def test_heartbeat_names_the_whole_stack_and_stops_when_idle(clock):
    p, log = _progress(clock, heartbeat_s=25.0)
    with p.phase("rounds", total=3, label="federated rounds"):
        for _ in p.iter([1, 2], "round 1: local training"):
            clock.t += 26.0
            assert p.tick() is True
            break
    assert "federated rounds 0/3 > round 1: local training 0/2: still working (26 s in this step)" in log.lines()
    n = len(log.lines())
    clock.t += 1000.0
    assert p.tick() is False and len(log.lines()) == n  # nothing running: no heartbeat


def test_iter_ends_at_n_of_n_and_a_stop_is_said(clock):
    p, log = _progress(clock)
    assert list(p.iter(range(3), "federated rounds")) == [0, 1, 2]
    assert log.lines()[0] == "federated rounds: started (0/3)"
    assert log.lines()[-1] == "federated rounds: 3/3 done in 0.0 s"
    for i in p.iter(range(5), "rounds again"):
        if i == 1:
            break
    assert log.lines()[-1] == "rounds again: stopped at 1/5 after 0.0 s"


def test_advance_lines_are_throttled_not_per_item(clock):
    p, log = _progress(clock, min_interval_s=10.0)
    with p.phase("baseline", total=100) as task:
        for _ in range(100):
            clock.t += 1.0
            task.advance()
    progress_lines = [line for line in log.lines() if line.startswith("baseline ") and "/100" in line]
    assert 8 <= len(progress_lines) <= 11  # one line per 10 s of 100 s, not one per step
    assert log.lines()[-1] == "baseline: 100/100 done in 1 min 40 s"


def test_disabled_progress_is_silent_but_still_times_phases(clock):
    p, log = _progress(clock, enabled=False)
    with p.phase("export"):
        clock.t += 2.5
        p.print("hello")
        clock.t += 100
        p.tick()
    with p.phase("export"):
        clock.t += 1.0
    assert log.getvalue() == "" and p.phase_seconds == {"export": 103.5}


def test_phase_time_is_recorded_when_the_phase_fails(clock):
    p, log = _progress(clock)
    with pytest.raises(RuntimeError):
        with p.phase("report", total=1):
            clock.t += 4.0
            raise RuntimeError("boom")
    assert p.phase_seconds == {"report": 4.0}
    assert log.lines()[-1] == "report: stopped at 0/1 after 4.0 s"


def test_terminal_bars_leave_a_final_n_of_n_line(clock):
    p, log = _progress(clock, interactive=True)
    for _ in p.iter(range(4), "federated rounds"):
        p.print("[yellow]round line[/]")
    text = log.getvalue()
    assert "federated rounds: 4/4 done in" in text and "round line" in text and "[yellow]" not in text


def test_markup_is_plain_text_in_a_log_file(clock):
    p, log = _progress(clock)
    p.print("[yellow]round 3 aborted: too few holders[/]")
    assert log.lines() == ["round 3 aborted: too few holders"]


def test_real_ticker_thread_writes_heartbeats():
    out = io.StringIO()
    p = Progress(stream=out, heartbeat_s=0.05, tick_s=0.01)
    with p.phase("data"):
        time.sleep(0.4)
    time.sleep(0.05)
    beats = [line for line in out.getvalue().splitlines() if "still working" in line]
    assert len(beats) >= 2
    n = len(out.getvalue())
    time.sleep(0.1)
    assert len(out.getvalue()) == n  # the ticker stopped with the last task


def test_data_steps_are_plain_lines_without_source_tags(clock):
    p, log = _progress(clock)
    with Steps(p) as steps:
        with steps.step("reading documents"):
            clock.t += 0.3
        for _ in steps.track(range(3), 3, "tokenizing"):
            pass
        steps.done("data: 4 sources, 12 documents")
    lines = log.lines()
    assert "data: reading documents: done in 0.3 s" in lines
    assert "data: tokenizing: 3/3 done in 0.0 s" in lines
    assert lines[-1] == "data: 4 sources, 12 documents"
    assert not any(".py:" in line for line in lines)


def test_format_seconds():
    assert [format_seconds(s) for s in (3.21, 42, 130, 3720)] == ["3.2 s", "42 s", "2 min 10 s", "1 h 02 min"]
