"""The GPU fast path's CPU-visible contract (issue 14): Liger never touches a CPU run (the plain path,
bit for bit), a missing liger-kernel falls back cleanly, regional compile trains what eager trains,
config validation; and DP-SGD accounts a step whose Poisson batch came out empty (issue 15).

The CUDA side (Liger's loss/gradients vs plain, pinned Δ) is tests/gpu/test_fused_gpu.py."""

import sys

import pytest
import torch

from securefed.training import fused
from securefed.training.flat import get_flat
from securefed.training.models import build_model
from securefed.training.trainer import DPSGDConfig, LocalTrainer, TrainConfig


def _data(seed: int, n: int = 24, t: int = 16, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _tiny():
    return build_model("tiny", vocab_size=64, seq_len=16, seed=0)


def _round(cfg: TrainConfig, *, seed: int = 0):
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=seed)
    tr = LocalTrainer(model, cfg)
    theta = get_flat(model).clone()
    upd = tr.new_holder(1, _data(1), seed=2, total_steps=10).train_round(theta)
    return tr, upd


def test_cpu_run_never_uses_liger_and_is_bit_identical_to_fused_off():
    base = dict(local_steps=3, batch_size=4, warmup_steps=0, accelerator="cpu")
    tr_auto, up_auto = _round(TrainConfig(**base, fused="all"))
    tr_off, up_off = _round(TrainConfig(**base, fused="off"))
    assert tr_auto.fused == "off" and "CUDA" in tr_auto.fused_reason
    # no method of the model instance was rebound: the module tree is the plain transformers one
    for m in tr_auto.raw_model.modules():
        assert "forward" not in m.__dict__
    assert not hasattr(tr_auto.raw_model, "_securefed_fused")
    assert torch.equal(up_auto.delta, up_off.delta) and up_auto.mean_loss == up_off.mean_loss


def test_missing_liger_falls_back_cleanly(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # what an absent package looks like to import
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", None)
    assert fused.liger_available() is False
    mode, why = fused.resolve_fused("auto", device_type="cuda", dp_sgd=False, compile_=True)
    assert mode == "off" and "not installed" in why
    mode, why = fused.resolve_fused("all", device_type="cuda", dp_sgd=False, compile_=False)
    assert mode == "off"


def test_resolve_fused_rules(monkeypatch):
    monkeypatch.setattr(fused, "liger_available", lambda: True)  # the rule table, given Liger imports
    assert fused.resolve_fused("auto", device_type="cuda", dp_sgd=False, compile_=False)[0] == "all"
    assert fused.resolve_fused("auto", device_type="cuda", dp_sgd=False, compile_=True)[0] == "head"
    assert fused.resolve_fused("all", device_type="cuda", dp_sgd=False, compile_=True)[0] == "all"
    assert fused.resolve_fused("off", device_type="cuda", dp_sgd=False, compile_=False)[0] == "off"
    assert fused.resolve_fused("auto", device_type="cuda", dp_sgd=True, compile_=False)[0] == "off"  # per_sample
    # DP-SGD ghost clipping: the block kernels only (per-record losses need the logits the fused head never forms)
    assert fused.resolve_fused("auto", device_type="cuda", dp_sgd=True, compile_=False, dp_clipping="ghost")[0] == "blocks"
    assert fused.resolve_fused("all", device_type="cuda", dp_sgd=True, compile_=False, dp_clipping="ghost")[0] == "blocks"
    mode, why = fused.resolve_fused("head", device_type="cuda", dp_sgd=True, compile_=False, dp_clipping="ghost")
    assert mode == "off" and "each record's loss" in why
    assert fused.resolve_fused("auto", device_type="cpu", dp_sgd=True, compile_=False, dp_clipping="ghost")[0] == "off"
    assert fused.resolve_fused("all", device_type="cpu", dp_sgd=False, compile_=False)[0] == "off"
    with pytest.raises(ValueError, match="train.fused"):
        fused.resolve_fused("liger", device_type="cuda", dp_sgd=False, compile_=False)


def test_config_validation():
    with pytest.raises(ValueError, match="dp_sgd"):
        TrainConfig(compile=True, dp_sgd=DPSGDConfig(enabled=True))
    with pytest.raises(ValueError, match="compile_scope=model"):
        TrainConfig(compile=True, compile_scope="model", fused="all")
    with pytest.raises(ValueError, match="sdpa_backend"):
        TrainConfig(sdpa_backend="mem")
    with pytest.raises(ValueError, match="train.fused"):
        TrainConfig(fused="yes")
    TrainConfig(compile=True, compile_scope="model", fused="auto")  # auto: plain kernels under a whole-model compile


def test_apply_liger_rejects_a_non_llama_model():
    with pytest.raises(TypeError, match="Llama"):
        fused.apply_liger(torch.nn.Linear(2, 2), blocks=True)


def test_apply_liger_blocks_only_keeps_the_head_and_runs_the_norms_out_of_place():
    """Mode 'blocks' (DP-SGD): the model's own forward (logits, per-record losses) and the LM head module stay;
    the norms get the out-of-place kernel, whose backward leaves dY (what a DP hook reads) intact. Patching
    only binds methods, so this runs without CUDA."""
    model = _tiny()
    fused.apply_liger(model, blocks=True, head=False)
    assert model._securefed_fused == "blocks"
    assert "forward" not in vars(model)                          # LlamaForCausalLM.forward: logits, no fused loss
    norms = [model.model.norm] + [n for layer in model.model.layers
                                  for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    assert all(n.forward.__func__ is fused._rms_norm_forward_out_of_place for n in norms)
    assert all(layer.mlp.forward.__func__ is fused._swiglu_forward for layer in model.model.layers)
    full = _tiny()
    fused.apply_liger(full, blocks=True)
    assert full._securefed_fused == "all" and full.model.norm.forward.__func__ is fused._rms_norm_forward
    with pytest.raises(ValueError, match="nothing to patch"):
        fused.apply_liger(_tiny(), blocks=False, head=False)


def test_per_record_nll_is_each_records_mean_next_token_loss():
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    got = fused.per_record_nll(logits, ids)       # CPU: the eager loss (the compiled one runs on CUDA only)
    want = torch.stack([torch.nn.functional.cross_entropy(logits[i, :-1], ids[i, 1:]) for i in range(3)])
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_regional_compile_trains_what_eager_trains():
    base = dict(local_steps=3, batch_size=4, warmup_steps=0, accelerator="cpu")
    tr_c, up_c = _round(TrainConfig(**base, compile=True))
    tr_e, up_e = _round(TrainConfig(**base))
    assert tr_c.compiled == "blocks" and tr_e.compiled is None
    # each decoder layer is its own compiled region; the embedding, final norm and LM head are not
    layers = tr_c.raw_model.model.layers
    assert all(getattr(layer, "_compiled_call_impl", None) is not None for layer in layers)
    assert getattr(tr_c.raw_model, "_compiled_call_impl", None) is None
    assert up_c.mean_loss == pytest.approx(up_e.mean_loss, rel=1e-4)
    # Inductor's fused reductions round differently; AdamW's first steps (≈ lr·sign(g)) turn that into
    # a few coordinates whose tiny gradients differ in sign: bound the whole vector and the worst one
    rel = float((up_c.delta - up_e.delta).norm() / up_e.delta.norm())
    assert rel < 2e-3, rel
    assert float((up_c.delta - up_e.delta).abs().max()) < 0.1 * 1e-3  # a tenth of one lr-sized step
    # evaluation runs the blocks eagerly (no new graphs) and agrees with the eager trainer's
    data = _data(5, n=6)
    assert tr_c.evaluate(data) == pytest.approx(tr_e.evaluate(data), rel=1e-4)


def test_dp_sgd_empty_poisson_batch_is_a_noise_step_and_is_accounted():
    # q = B/N = 1/64: most steps' Poisson batches are empty; every step is a run of the Gaussian
    # mechanism (noise only when empty) and must be in the accountant, or ε is under-reported
    n, k, secret = 64, 12, 1234
    empties = sum(int((torch.rand(n, generator=g) < 1 / n).sum() == 0)
                  for g in [torch.Generator().manual_seed(secret)] for _ in range(k))
    assert empties >= 3, "the chosen secret must draw empty batches, or this test checks nothing"
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    cfg = TrainConfig(local_steps=k, batch_size=1, warmup_steps=0, accelerator="cpu",
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=0.5))
    tr = LocalTrainer(model, cfg)
    theta = get_flat(model).clone()
    ht = tr.new_holder(1, _data(1, n=n), seed=0, total_steps=100, dp_secret_seed=secret)
    upd = ht.train_round(theta)
    steps = sum(num for _, _, num in ht.accountant.history)
    assert steps == k
    assert all(q == pytest.approx(1 / n) for _, q, _ in ht.accountant.history)
    # the ε reported is that of k steps, not of the non-empty ones only
    from opacus.accountants import RDPAccountant

    ref = RDPAccountant()
    for _ in range(k):
        ref.step(noise_multiplier=1.0, sample_rate=1 / n)
    assert upd.record_epsilon == pytest.approx(ref.get_epsilon(1e-5))
    assert torch.isfinite(upd.delta).all()


def test_dp_sgd_all_empty_round_still_moves_the_model_by_noise():
    # q = 1/N: with this secret both batches of a 2-step round are empty; the release is pure noise
    n, secret = 1000, 2
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    cfg = TrainConfig(local_steps=2, batch_size=1, warmup_steps=0, accelerator="cpu",
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=0.5))
    tr = LocalTrainer(model, cfg)
    theta = get_flat(model).clone()
    data = torch.zeros((n, 16), dtype=torch.long)
    g = torch.Generator().manual_seed(secret)
    assert all(int((torch.rand(n, generator=g) < 1 / n).sum()) == 0 for _ in range(2))
    ht = tr.new_holder(1, data, seed=0, total_steps=10, dp_secret_seed=secret)
    upd = ht.train_round(theta)
    assert sum(num for _, _, num in ht.accountant.history) == 2
    assert upd.delta.abs().max() > 0
