"""Run configuration: presets load, unknown keys and bad values give one clear error."""

import pytest

from securefed.configio import ConfigError
from securefed.runtime.config import RunConfig, list_presets, load_run_config


def test_demo_preset_is_default_and_valid():
    assert "demo" in list_presets()
    cfg = load_run_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.model.preset == "tiny" and cfg.aggregation.mode == "secagg"


@pytest.mark.parametrize("override, message", [
    ("federation.nope=3", "unknown key"),
    ("train.local_steps=0", "local_steps"),
    ("model.preset=13b", "unknown model preset"),
    ("aggregation.mode=telepathy", "not one of"),
    ("federation.rounds=abc", "integer"),
    ("baseline_lr=0", "baseline_lr must be > 0"),
    ("baseline_lr=-0.1", "baseline_lr must be > 0"),
    ("baseline_lr=abc", "expected a number"),
    ("baseline_batch_size=0", "baseline_batch_size must be >= 1"),
])
def test_bad_settings_are_refused_clearly(override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_run_config(overrides=[override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown run preset"):
        load_run_config(preset="nope")


def test_dp_requires_uniform_weights():
    with pytest.raises((ConfigError, ValueError), match="uniform"):
        load_run_config(overrides=["privacy.mode=central", "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0",
                                   "federation.weighting=tokens"])


def test_a_number_in_exponent_form_is_a_number():
    """PyYAML (YAML 1.1) reads 1e-6 — no dot — as a string, and `--set privacy.delta=1e-6` was refused as "expected a
    number" (an audit); YAML 1.2 and JSON read it as the number it is, and so does securefed now. Words stay refused."""
    cfg = load_run_config(preset="dp", overrides=["privacy.delta=1e-6", "train.dp_sgd.delta=2E-5", "baseline_lr=3e-3"])
    assert (cfg.privacy.delta, cfg.train.dp_sgd.delta, cfg.baseline_lr) == (1e-6, 2e-5, 3e-3)
    for bad in ("abc", "1e", "e5", "nan"):
        with pytest.raises(ConfigError, match="expected a number"):
            load_run_config(overrides=[f"baseline_lr={bad}"])
