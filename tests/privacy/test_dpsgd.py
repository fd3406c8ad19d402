"""DP-SGD on a tiny transformers Llama: per-sample gradients exist (RMSNorm included) and are clipped."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from securefed.privacy.dpsgd import attach_dp_sgd  # noqa: E402


def _tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def test_real_step_clips_every_sample():
    model = _tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    gsm, dp_opt, acc = attach_dp_sgd(model, opt, noise_multiplier=0.0, max_grad_norm=0.01, expected_batch_size=4, sample_rate=0.1)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    gsm(input_ids=x, labels=x).loss.backward()
    params = [p for p in gsm.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None for p in params)  # RMSNorm weights too (functorch fallback)
    per_sample = torch.stack([p.grad_sample.reshape(4, -1).norm(dim=1) for p in params]).norm(dim=0)
    assert (per_sample > 0.01).all()  # clipping has something to do
    dp_opt.step()
    # with zero noise the update is the mean of clipped per-sample gradients: norm ≤ C
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < step <= 0.01 + 1e-6
    assert acc.history == [(0.0, 0.1, 1)]


def test_noise_and_accountant():
    model = _tiny_llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gsm, dp_opt, acc = attach_dp_sgd(model, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2, sample_rate=0.01)
    x = torch.randint(0, 64, (2, 8))
    gsm(input_ids=x, labels=x).loss.backward()
    dp_opt.step()
    assert 0 < acc.get_epsilon(1e-5) < 10


def test_bad_arguments():
    model = _tiny_llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_grad_norm"):
        attach_dp_sgd(model, opt, noise_multiplier=1.0, max_grad_norm=0.0, expected_batch_size=2, sample_rate=0.1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        attach_dp_sgd(model, opt, noise_multiplier=-1.0, max_grad_norm=1.0, expected_batch_size=2, sample_rate=0.1)
    with pytest.raises(ValueError, match="sample_rate"):
        attach_dp_sgd(model, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2, sample_rate=0.0)
