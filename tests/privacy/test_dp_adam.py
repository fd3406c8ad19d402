"""DP-AdamBC (securefed/privacy/dp_adam.py, protocols/dp.md §10.6): AdamW whose second moment has the DP noise's
known variance Φ = (σ·C/B)² taken out, floored at γ. Post-processing of the noised gradient: the record-level ε a
holder reports is the same with it as without."""

import math

import pytest
import torch

from securefed.privacy.dp_adam import AdamWBC, noise_variance


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 5, generator=g)), torch.nn.Parameter(torch.randn(11, generator=g))]


def test_without_noise_it_is_torch_adamw():
    """Φ = 0 and a floor below every v̂: the same iterates as torch's AdamW with eps = 0, weight decay included."""
    a, b = _params(), _params()
    oa = AdamWBC(a, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, phi=0.0, floor=1e-30)
    ob = torch.optim.AdamW(b, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, eps=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        for pa, pb in zip(a, b):
            grad = torch.randn(pa.shape, generator=g)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        oa.step()
        ob.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # the state is AdamW's: one restores into the other
    assert set(oa.state[a[0]]) == set(ob.state[b[0]]) >= {"step", "exp_avg", "exp_avg_sq"}


def test_the_noise_variance_is_subtracted_and_floored():
    """First step, gradient c everywhere: m̂ = c, v̂ = c², so the step is lr·c/√(c² − Φ), or lr·c/√γ where c² − Φ < γ."""
    c, lr, phi, floor = 0.02, 1e-3, 3e-4, 1e-6
    p = torch.nn.Parameter(torch.zeros(4))
    opt = AdamWBC([p], lr=lr, betas=(0.9, 0.999), phi=phi, floor=floor)
    p.grad = torch.full((4,), c)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), -lr * c / math.sqrt(c * c - phi)))
    q = torch.nn.Parameter(torch.zeros(4))
    opt = AdamWBC([q], lr=lr, phi=phi, floor=floor)
    q.grad = torch.full((4,), 0.01)                      # c² = 1e-4 < Φ: the floor
    opt.step()
    torch.testing.assert_close(q.detach(), torch.full((4,), -lr * 0.01 / math.sqrt(floor)))


def test_noise_variance_is_what_the_dp_optimizer_adds_per_coordinate():
    assert noise_variance(0.5, 1.0, 512) == pytest.approx((0.5 / 512) ** 2)
    assert noise_variance(1.0, 2.0, 4) == 0.25


@pytest.mark.parametrize("bad", [{"phi": -1.0}, {"phi": math.nan}, {"floor": 0.0}, {"floor": True}, {"lr": -1e-3}])
def test_bad_settings_are_one_clear_error(bad):
    kw = {"lr": 1e-3, "phi": 1e-6, "floor": 1e-7} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        AdamWBC(_params(), **kw)


def test_config_refuses_a_floor_that_is_not_positive():
    from securefed.training.config import DPSGDConfig

    with pytest.raises(ValueError, match="adam_bc_floor_ratio"):
        DPSGDConfig(enabled=True, adam_bias_correction=True, adam_bc_floor_ratio=0.0)
    with pytest.raises(TypeError, match="adam_bias_correction"):
        DPSGDConfig(enabled=True, adam_bias_correction="yes")
    with pytest.raises(ValueError, match="needs train.dp_sgd.enabled=true"):
        DPSGDConfig(enabled=False, adam_bias_correction=True)


def test_a_dp_sgd_federation_with_it_reports_the_same_record_level_epsilon(tmp_path, fed_cache):
    """Through the real trainer: the holders' optimizer under Opacus is AdamWBC with Φ = (σ·C/B)², the model moves
    differently, and every holder's record-level ε is the same as without it (post-processing)."""
    from securefed.audit.federation_harness import tiny_federation

    dp = ("train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4",
          "federation.rounds=1")
    eps, models = {}, {}
    for bc in (False, True):
        fed = tiny_federation(tmp_path / str(bc), overrides=(*dp, f"train.dp_sgd.adam_bias_correction={str(bc).lower()}"),
                              cache_dir=fed_cache)
        fed.coordinator.run_round(1)
        t = fed.holders[1].trainer
        inner = t.optimizer.original_optimizer
        assert isinstance(inner, AdamWBC) == bc
        if bc:   # Φ = (σ·C/B)², the floor a tenth of it (the default adam_bc_floor_ratio)
            assert inner.param_groups[0]["phi"] == pytest.approx((1.0 * 1.0 / t.batch_size) ** 2)
            assert inner.param_groups[0]["floor"] == pytest.approx(0.1 * inner.param_groups[0]["phi"])
        eps[bc] = [r["record_epsilon_max"] for r in fed.coordinator.metrics]
        models[bc] = fed.coordinator.outer.params.clone()
    assert eps[True] == eps[False] and eps[True][0] > 0
    assert not torch.equal(models[True], models[False])
