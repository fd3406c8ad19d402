"""`securefed simulate --quiet` ("no progress bars") still says when a run goes wrong (README, Progress and warnings:
"a run that goes wrong says so while it runs ... prints a warning"). A newcomer's review (E): with --quiet the
coordinator's round warnings were INFO log records only, so at the default --log-level WARNING a run whose
perplexity ended above the unigram's (or whose rounds all aborted) printed nothing but its key-removal lines."""

from __future__ import annotations

import logging


def test_quiet_run_still_warns_on_stderr(tiny_run, tmp_path, caplog):
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    caplog.set_level(logging.WARNING)
    # tiny_run's 2 rounds end at eval perplexity ~300, above the eval set's unigram ~199: the last round warns
    Simulation(load_run_config(overrides=tiny_run), tmp_path / "run", progress=False, threads_per_holder=1).run()
    said = [r for r in caplog.records if r.name.startswith("securefed.coordinator") and "perplexity above unigram" in
            r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in said), [(r.levelname, r.getMessage()) for r in said]
