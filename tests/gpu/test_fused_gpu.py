"""Liger fast path on a CUDA GPU (skipped elsewhere): the fused loss and kernels compute what the plain
HF path computes (bf16 tolerances), no logits are materialised, Δ comes back as pinned float32 CPU
memory, and a trainer with fused kernels + regional compile trains like the plain trainer.

    python3 -m pytest -q tests/gpu/test_fused_gpu.py      # on a GPU machine with liger-kernel
"""

import pytest
import torch

from securefed.training import fused
from securefed.training.flat import get_flat
from securefed.training.models import ModelPreset, build_model
from securefed.training.trainer import LocalTrainer, TrainConfig

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fused.liger_available()),
                                reason="needs a CUDA GPU and liger-kernel")

SMALL = ModelPreset("gpu-test", d_model=256, n_layers=3, n_heads=4, max_seq_len=256)
VOCAB, SEQ = 4096, 256


def _model(seed=0):
    with torch.device("cuda"):
        return build_model(SMALL, vocab_size=VOCAB, seq_len=SEQ, seed=seed)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out, torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])


@pytest.mark.parametrize("blocks", [False, True])
def test_liger_loss_and_gradients_match_plain(blocks):
    x = torch.randint(0, VOCAB, (4, SEQ), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    plain, fast = _model(), _model()
    fused.apply_liger(fast, blocks=blocks)
    out_p, g_p = _grads(plain, x)
    out_f, g_f = _grads(fast, x)
    assert out_f.logits is None and out_p.logits is not None       # the fused loss never built logits
    assert float(out_f.loss) == pytest.approx(float(out_p.loss), rel=5e-3)
    rel = float((g_f - g_p).norm() / g_p.norm())
    assert rel < 3e-2, rel                                         # bf16 autocast on both sides
    # evaluation (no grad) through the fused loss agrees too
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert float(fast(input_ids=x, labels=x).loss) == pytest.approx(float(plain(input_ids=x, labels=x).loss), rel=5e-3)


@pytest.mark.parametrize("mode", [dict(fused="all"), dict(fused="head", compile=True),
                                  dict(fused="all", sdpa_backend="cudnn")])
def test_trainer_fast_path_trains_like_plain(mode):
    data = torch.randint(0, VOCAB, (64, SEQ), generator=torch.Generator().manual_seed(3))
    out = {}
    for name, extra in (("plain", dict(fused="off")), ("fast", mode)):
        model = _model()
        tr = LocalTrainer(model, TrainConfig(local_steps=8, batch_size=8, warmup_steps=2, lr=1e-3, **extra))
        theta = get_flat(model).clone()
        upd = tr.new_holder(1, data, seed=0, total_steps=100).train_round(theta)
        out[name] = (tr, upd, tr.evaluate(data[:16]))
    tr_f, up_f, ev_f = out["fast"]
    _, up_p, ev_p = out["plain"]
    assert tr_f.fused == mode["fused"]
    assert up_f.delta.device.type == "cpu" and up_f.delta.dtype == torch.float32 and up_f.delta.is_pinned()
    assert torch.isfinite(up_f.delta).all()
    assert up_f.mean_loss == pytest.approx(up_p.mean_loss, rel=2e-2)
    assert ev_f == pytest.approx(ev_p, rel=2e-2)
    cos = float(torch.nn.functional.cosine_similarity(up_f.delta, up_p.delta, dim=0))
    assert cos > 0.9, cos


def _dp_clipped(model, x, c):
    """Ghost clipping's clipped summed gradient and the records' norms, under bf16 autocast, book-keeping."""
    from securefed.privacy.ghost import GhostClippingModule, clipped_backward

    gsm = GhostClippingModule(model, max_grad_norm=c)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_i = fused.per_record_nll(gsm(input_ids=x).logits, x)
        norms = clipped_backward(gsm, loss_i)
    return norms, torch.cat([p.grad.reshape(-1).float() for p in model.parameters()]), loss_i.detach()


def test_dp_sgd_ghost_clipping_with_liger_block_kernels_clips_what_plain_kernels_clip():
    """Mode 'blocks' under DP-SGD (RESULTS.md (zp15)): Liger's RMSNorm (out of place), SwiGLU and RoPE inside the
    blocks, Opacus' hooks around every Linear, the RMSNorm weights' per-record gradients from their inputs; the
    records' norms and the clipped sum agree with the plain kernels' within bf16 error, and clipping binds."""
    x = torch.randint(0, VOCAB, (6, SEQ), device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    plain, fast = _model(), _model()
    fused.apply_liger(fast, blocks=True, head=False)
    n_p, g_p, l_p = _dp_clipped(plain, x, c=0.5)
    n_f, g_f, l_f = _dp_clipped(fast, x, c=0.5)
    assert (n_p > 0.5).all()                                       # clipping binds: the sum is of clipped g_i
    torch.testing.assert_close(l_f, l_p, rtol=5e-3, atol=0)
    torch.testing.assert_close(n_f, n_p, rtol=3e-2, atol=0)
    rel = float((g_f - g_p).norm() / g_p.norm())
    assert rel < 3e-2, rel


def test_compiled_per_record_loss_matches_eager_with_its_gradient():
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (5, 64), device="cuda")
    logits = torch.randn(5, 64, VOCAB, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    got = fused.per_record_nll(logits, ids)                        # compiled on CUDA (dynamic batch)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    want = fused._nll_per_record(logits, ids)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    assert fused._nll_compiled not in (None, False)                # the compiled loss ran, not the fallback
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_got.float(), g_want.float(), rtol=2e-2, atol=1e-4)
    assert fused.per_record_nll(logits[:3], ids[:3]).shape == (3,)  # another batch size: no failure


def test_trainer_dp_sgd_ghost_uses_the_block_kernels_and_trains():
    from securefed.training.config import DPSGDConfig

    data = torch.randint(0, VOCAB, (64, SEQ), generator=torch.Generator().manual_seed(3))
    model = _model()
    tr = LocalTrainer(model, TrainConfig(local_steps=4, batch_size=8, warmup_steps=0, lr=1e-3,
                                         dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=0.5, max_grad_norm=1.0,
                                                            clipping="ghost")))
    assert tr.fused == "blocks" and model._securefed_fused == "blocks"
    theta = get_flat(model).clone()
    upd = tr.new_holder(1, data, seed=0, total_steps=100, dp_secret_seed=7).train_round(theta)
    assert torch.isfinite(upd.delta).all() and float(upd.delta.norm()) > 0
