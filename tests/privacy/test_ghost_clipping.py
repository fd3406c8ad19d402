"""Ghost / fast gradient clipping (securefed.privacy.ghost) on a tiny transformers Llama.

The exact property: with noise 0, the clipped summed gradient Σ_i min(1, C/‖g_i‖)·g_i that ghost
clipping leaves in ``.grad`` equals the one built from per-sample gradients (Opacus' functorch
GradSampleModule, and a plain loop over records as the independent reference), on both routes a layer
can take (ghost norm: T = 6; instantiation: T = 24) and with the tied embedding. Then: the trainer's
ghost mode moves the model like per_sample mode and spends the same ε; bad configs and unsupported
models are refused with one clear error.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from securefed.privacy.dpsgd import attach_dp_sgd, wrap_for_dp_sgd  # noqa: E402
from securefed.privacy.ghost import GhostClippingModule, clipped_backward, llama_rms_norm_grad_sample  # noqa: E402

V, C = 64, 0.05


def _tiny_llama(*, tie: bool = True):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).float()


def _record_losses(model, x):
    logits = model(input_ids=x).logits                                              # (b, T, V)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none")
    return nll.view(x.shape[0], -1).mean(1)                                         # (b,)


def _loop_reference(model, x):
    """Σ_i min(1, C/(‖g_i‖+1e-6))·g_i from one backward per record: no Opacus at all."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(_record_losses(model, x[i : i + 1]).sum(), params)
        n = torch.sqrt(sum((t.double() ** 2).sum() for t in g)).float()
        norms.append(n)
        for acc, t in zip(total, g):
            acc.add_(t * (C / (n + 1e-6)).clamp(max=1.0))
    return total, torch.stack(norms)


@pytest.mark.parametrize("book_keeping", [True, False])
@pytest.mark.parametrize("seq_len,route", [(6, "ghost"), (24, "instantiate")])
def test_ghost_clipped_sum_equals_per_sample(seq_len, route, book_keeping):
    x = torch.randint(0, V, (5, seq_len), generator=torch.Generator().manual_seed(seq_len))
    ref_model = _tiny_llama()
    ref, ref_norms = _loop_reference(ref_model, x)

    # Opacus functorch per-sample gradients, clipped and summed by hand
    ft = wrap_for_dp_sgd(_tiny_llama(), clipping="per_sample", max_grad_norm=C)
    ft(input_ids=x, labels=x).loss.backward()
    params = [p for p in ft.parameters() if p.requires_grad]
    gs = [p.grad_sample for p in params]   # (b, *p.shape): Opacus undoes the "mean" loss's 1/b itself
    ft_norms = torch.stack([g.reshape(x.shape[0], -1).norm(dim=1) for g in gs]).norm(dim=0)
    coef = (C / (ft_norms + 1e-6)).clamp(max=1.0)
    ft_sum = [torch.einsum("b,b...->...", coef, g) for g in gs]

    model = _tiny_llama()
    gsm = GhostClippingModule(model, max_grad_norm=C, book_keeping=book_keeping)
    norms = clipped_backward(gsm, _record_losses(gsm, x), norm_inputs=[model.get_input_embeddings().weight])
    assert gsm.routes["model.layers.0.self_attn.q_proj"] == route
    assert gsm.routes["lm_head"] == "instantiate" and gsm.routes["model.embed_tokens"] == "instantiate"  # tied
    assert (ref_norms > C).all()                         # clipping binds for every record
    torch.testing.assert_close(norms, ref_norms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ft_norms, ref_norms, rtol=1e-4, atol=1e-6)
    for p, r, f in zip(model.parameters(), ref, ft_sum):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("book_keeping", [True, False])
def test_untied_embedding_takes_the_ghost_route_and_slices_add_up(book_keeping):
    x = torch.randint(0, V, (6, 6), generator=torch.Generator().manual_seed(3))
    ref, _ = _loop_reference(_tiny_llama(tie=False), x)
    model = _tiny_llama(tie=False)
    gsm = GhostClippingModule(model, max_grad_norm=C, book_keeping=book_keeping)
    for xs in x.split(4):                                # two slices of one Poisson batch: 4 + 2 records
        clipped_backward(gsm, _record_losses(gsm, xs))
    assert gsm.routes["model.embed_tokens"] == "ghost" and gsm.routes["lm_head"] == "ghost"
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-7)


def test_zero_noise_step_is_the_mean_of_clipped_gradients_and_accounted():
    x = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(5))
    ref, _ = _loop_reference(_tiny_llama(), x)
    model = _tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    gsm = wrap_for_dp_sgd(model, clipping="ghost", max_grad_norm=C)
    _, dp_opt, acc = attach_dp_sgd(gsm, torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                                   max_grad_norm=C, expected_batch_size=8, sample_rate=0.1)
    clipped_backward(gsm, _record_losses(gsm, x))
    dp_opt.step()
    for p, b, r in zip(model.parameters(), before, ref):   # SGD lr 1: θ − Σ clipped / expected batch (8)
        torch.testing.assert_close(p.detach(), b - r / 8, rtol=1e-4, atol=1e-7)
    assert acc.history == [(0.0, 0.1, 1)]


def _train_cfg(clipping, **dp):
    from securefed.training.trainer import DPSGDConfig, TrainConfig

    return TrainConfig(local_steps=3, batch_size=6, lr=1e-2, warmup_steps=0, accelerator="cpu", precision="32-true",
                       dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=dp.pop("sigma", 0.0), max_grad_norm=C,
                                          delta=1e-3, clipping=clipping, **dp))


@pytest.mark.parametrize("sigma", [0.0, 1.1])
def test_trainer_ghost_matches_per_sample_and_spends_the_same_epsilon(sigma):
    """Same secret seed -> the same Poisson batches; σ = 0: the same Δ; any σ: the same accountant."""
    from securefed.training.flat import get_flat
    from securefed.training.trainer import LocalTrainer

    data = torch.randint(0, V, (40, 12), generator=torch.Generator().manual_seed(7))
    out = {}
    for clipping, extra in (("per_sample", {}), ("ghost", {"micro_batch_size": 2})):
        model = _tiny_llama()
        trainer = LocalTrainer(model, _train_cfg(clipping, sigma=sigma, **extra))
        h = trainer.new_holder(0, data, seed=0, total_steps=3, dp_secret_seed=11)
        up = h.train_round(get_flat(model).clone())
        out[clipping] = (up, h.accountant.history)
    (ps, ps_hist), (gh, gh_hist) = out["per_sample"], out["ghost"]
    assert ps_hist == gh_hist == [(sigma, 6 / 40, 3)]
    assert ps.record_epsilon == gh.record_epsilon
    if sigma == 0.0:
        # AdamW (lr 1e-2) divides by √v: where a coordinate's gradient is near 0, fp32 summation-order differences of
        # ~1e-7 become Δ differences of ~1e-5 (0.1 % of lr) — seen on 2 of 22,688 coordinates for one batch draw
        torch.testing.assert_close(gh.delta, ps.delta, rtol=1e-3, atol=5e-5)
        assert ps.mean_loss == pytest.approx(gh.mean_loss, rel=1e-5)


def test_empty_poisson_batch_is_a_noised_accounted_step():
    from securefed.training.flat import get_flat
    from securefed.training.trainer import LocalTrainer

    model = _tiny_llama()
    trainer = LocalTrainer(model, _train_cfg("ghost", sigma=1.0))
    h = trainer.new_holder(0, torch.randint(0, V, (40, 12)), seed=0, total_steps=2, dp_secret_seed=1)
    h._next_batch = lambda: (torch.empty((0, 12), dtype=torch.long), None)
    theta = get_flat(model).clone()
    up = h.train_round(theta)
    assert h.accountant.history == [(1.0, 6 / 40, 3)] and up.delta.abs().sum() > 0   # noise only, yet a step


def test_config_validation():
    from securefed.training.config import DPSGDConfig, TrainConfig

    with pytest.raises(ValueError, match="clipping must be 'per_sample' or 'ghost'"):
        DPSGDConfig(clipping="book")
    with pytest.raises(ValueError, match="micro_batch_size needs train.dp_sgd.clipping=ghost"):
        DPSGDConfig(micro_batch_size=4)
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        DPSGDConfig(clipping="ghost", micro_batch_size=0)
    with pytest.raises(TypeError, match="micro_batch_size must be an int"):
        DPSGDConfig(clipping="ghost", micro_batch_size=2.5)
    for clipping in ("ghost", "per_sample"):
        for precision in ("16-mixed", "bf16-true"):
            with pytest.raises(ValueError, match=f"cannot run at precision {precision}: use bf16-mixed"):
                TrainConfig(precision=precision, dp_sgd=DPSGDConfig(enabled=True, clipping=clipping))
    with pytest.raises(ValueError, match="per_sample under bf16 autocast"):
        TrainConfig(precision="bf16-mixed", dp_sgd=DPSGDConfig(enabled=True, clipping="per_sample"))
    TrainConfig(precision="bf16-mixed", dp_sgd=DPSGDConfig(enabled=True, clipping="ghost"))
    for clipping in ("ghost", "per_sample"):   # each rank would draw its own Poisson batch and noise
        with pytest.raises(ValueError, match="one device per holder"):
            TrainConfig(devices=2, dp_sgd=DPSGDConfig(enabled=True, clipping=clipping))
    for name in ("noise_multiplier", "max_grad_norm", "delta"):   # YAML's .nan / .inf passed every comparison
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"train.dp_sgd.{name} must be finite"):
                DPSGDConfig(**{name: bad})
        with pytest.raises(TypeError, match=f"train.dp_sgd.{name} must be a number"):
            DPSGDConfig(**{name: "1"})
    from securefed.runtime.config import load_run_config

    cfg = load_run_config(preset="dp-sgd", overrides=["train.dp_sgd.clipping=ghost", "train.dp_sgd.micro_batch_size=8"])
    assert cfg.train.dp_sgd.clipping == "ghost" and cfg.train.dp_sgd.micro_batch_size == 8


def test_unsupported_models_are_refused():
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="cannot clip this model per record"):
        GhostClippingModule(bn, max_grad_norm=1.0)

    class Sneaky(torch.nn.Module):   # a weight used outside its module's forward gets no per-record norm
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1, bias=False)

        def forward(self, x):
            return self.a(x) @ self.b.weight.t()                                    # (b, 1); b never runs

    for book_keeping in (True, False):
        g = GhostClippingModule(Sneaky(), max_grad_norm=1.0, book_keeping=book_keeping)
        with pytest.raises(RuntimeError, match="no per-record gradient norm for parameter 'b.weight'"):
            clipped_backward(g, g(torch.randn(3, 4)).squeeze(1))


def test_under_bf16_autocast_the_per_record_work_runs_in_bf16_and_norms_stay_within_the_tightened_clip():
    """Autocast gives q/k/v, gate/up and the LM head fp32 inputs and bf16 output gradients: the kept per-record
    values are bf16 (the precision the layer computed in); their norms are taken in fp32 (dp.md §10.1) and stay
    within 2⁻⁶ of the records' autocast gradient norms."""
    x = torch.randint(0, V, (4, 24), generator=torch.Generator().manual_seed(3))
    ref_model = _tiny_llama()
    ref_norms = []
    for i in range(x.shape[0]):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _record_losses(ref_model, x[i : i + 1]).sum()
        g = torch.autograd.grad(loss, [p for p in ref_model.parameters() if p.requires_grad])
        ref_norms.append(torch.sqrt(sum((t.double() ** 2).sum() for t in g)).float())
    model = _tiny_llama()
    gsm = GhostClippingModule(model, max_grad_norm=C)
    kept_dtypes = {}
    real_keep = gsm._keep

    def spy(module, backprops, loss_reduction, batch_first):
        n_kept, n_gs = len(gsm._kept), len(gsm._kept_gs)
        real_keep(module, backprops, loss_reduction, batch_first)
        if isinstance(module, torch.nn.Linear):
            if len(gsm._kept) > n_kept:          # ghost route: its (A, G)
                kept = gsm._kept[-1][1]
            elif len(gsm._kept_gs) > n_gs:       # instantiated: its per-record gradients
                kept = gsm._kept_gs[-1][1]
            else:                                # tied (lm_head): held until the embedding's use is summed in
                (kept, _, _), = gsm._tied_sum.values()
            kept_dtypes[gsm._names[id(module)]] = kept.dtype

    gsm._keep = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _record_losses(gsm, x)
    norms = clipped_backward(gsm, losses, norm_inputs=[model.get_input_embeddings().weight])
    assert kept_dtypes["model.layers.0.self_attn.q_proj"] == torch.bfloat16 == kept_dtypes["lm_head"]
    assert torch.all((norms - torch.stack(ref_norms)).abs() <= 2**-6 * torch.stack(ref_norms))


@pytest.mark.parametrize("seq_len,kept_as", [(6, "A, G"), (24, "g_i")])
def test_book_keeping_keeps_the_smaller_state_of_each_layer(seq_len, kept_as):
    """What book-keeping holds until the clipped sum: an instantiated layer its per-record gradients g_i, a
    ghost-normed one its (A, G) — the routing test picks the smaller; the tied embedding / LM head, which must
    instantiate, keeps whichever is smaller: at T = 6 its uses' (A, G) (6·(32 + 64) per record for the head),
    at T = 24 the summed g_i (64·32). The clipped sum is exact either way (test above, both lengths)."""
    x = torch.randint(0, V, (4, seq_len), generator=torch.Generator().manual_seed(5))
    model = _tiny_llama()
    gsm = GhostClippingModule(model, max_grad_norm=C)
    tied = model.get_input_embeddings().weight
    seen = {}
    real = gsm.add_clipped_grads

    def spy(coef):
        seen["kept"] = [(gsm._names[id(m)], only) for m, _, _, only in gsm._kept]
        seen["gs"] = {id(p) for p, _ in gsm._kept_gs}
        real(coef)

    gsm.add_clipped_grads = spy
    clipped_backward(gsm, _record_losses(gsm, x))
    q = model.model.layers[0].self_attn.q_proj.weight
    if kept_as == "A, G":
        assert ("lm_head", id(tied)) in seen["kept"] and ("model.embed_tokens", id(tied)) in seen["kept"]
        assert id(tied) not in seen["gs"]
        assert ("model.layers.0.self_attn.q_proj", None) in seen["kept"] and id(q) not in seen["gs"]   # ghost route
    else:
        assert id(tied) in seen["gs"] and id(q) in seen["gs"]                                          # instantiated
        assert not any(name in ("lm_head", "model.embed_tokens", "model.layers.0.self_attn.q_proj")
                       for name, _ in seen["kept"])
    assert not gsm._kept and not gsm._kept_gs and not gsm._tied_sum          # released after the sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_rms_norm_sampler_is_each_records_autograd_gradient(dtype):
    """The RMSNorm weight's per-record gradient from the layer's input and output gradient equals autograd's
    per record, for an fp32 and a bf16 input (the layer casts x̂ to the input dtype before the weight)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(1)
    norm = LlamaRMSNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, g = torch.randn(4, 9, 16).to(dtype), torch.randn(4, 9, 16)
    want = torch.stack([torch.autograd.grad((norm(x[i : i + 1]).float() * g[i]).sum(), norm.weight)[0]
                        for i in range(4)])
    got = llama_rms_norm_grad_sample(norm, [x], g)[norm.weight]
    assert got.shape == (4, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norms_use_the_explicit_sampler_not_functorch_and_opacus_registry_is_untouched():
    """Every LlamaRMSNorm of a wrapped model goes through llama_rms_norm_grad_sample (no functorch copy of the
    layer is prepared, so a Liger kernel in its forward is fine); Opacus' class-wide registry is not changed."""
    from opacus.grad_sample import GradSampleModule
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    gsm = GhostClippingModule(_tiny_llama(), max_grad_norm=C)
    norms = [m for m in gsm._module.modules() if isinstance(m, LlamaRMSNorm)]
    assert len(norms) == 5 and gsm.GRAD_SAMPLERS[LlamaRMSNorm] is llama_rms_norm_grad_sample
    assert not any(hasattr(m, "ft_compute_sample_grad") for m in norms)     # Opacus' functorch preparation
    assert LlamaRMSNorm not in GradSampleModule.GRAD_SAMPLERS and LlamaRMSNorm not in GhostClippingModule.GRAD_SAMPLERS
    x = torch.randint(0, V, (3, 24), generator=torch.Generator().manual_seed(3))
    clipped_backward(gsm, _record_losses(gsm, x))
    assert {gsm.routes[n] for n, m in gsm._module.named_modules() if isinstance(m, LlamaRMSNorm)} == {"instantiate"}


def test_two_backwards_over_liger_kernels_are_refused():
    model = _tiny_llama()
    gsm = GhostClippingModule(model, max_grad_norm=C, book_keeping=False)
    model._securefed_fused = "blocks"          # what fused.apply_liger(..., head=False) marks
    x = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(4))
    with pytest.raises(RuntimeError, match="book-keeping"):
        clipped_backward(gsm, _record_losses(gsm, x))
