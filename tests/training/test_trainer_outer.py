"""Training core: FedAvg arithmetic, optimizer state across rounds, K-step loop, Δ sign."""

import pytest
import torch

from securefed.training.flat import get_flat, set_flat
from securefed.training.models import build_model, count_parameters, get_preset, PRESETS
from securefed.training.outer import OuterConfig, OuterOptimizer
from securefed.training.trainer import LocalTrainer, TrainConfig, lr_at


def _data(seed: int, n: int = 24, t: int = 16, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trainer():
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    return LocalTrainer(model, TrainConfig(local_steps=3, batch_size=4, warmup_steps=0, accelerator="cpu"))


def test_fedavg_lr1_equals_mean_of_local_models(trainer):
    theta0 = get_flat(trainer.raw_model).clone()
    locals_, deltas = [], []
    for h in range(3):
        ht = trainer.new_holder(h, _data(h), seed=1, total_steps=10)
        upd = ht.train_round(theta0)
        locals_.append(get_flat(trainer.raw_model).clone())
        deltas.append(upd.delta)
        # Δ = θ_global − θ_local exactly
        torch.testing.assert_close(upd.delta, theta0 - locals_[-1], rtol=0, atol=0)
    outer = OuterOptimizer(theta0, OuterConfig(name="fedavg", lr=1.0))
    new = outer.step(torch.stack(deltas).mean(0))
    torch.testing.assert_close(new, torch.stack(locals_).mean(0), rtol=1e-6, atol=1e-6)


def test_nesterov_matches_closed_form():
    theta = torch.zeros(5)
    outer = OuterOptimizer(theta, OuterConfig(name="nesterov", lr=0.7, momentum=0.9))
    d1, d2 = torch.ones(5), 2 * torch.ones(5)
    t1 = outer.step(d1).clone()          # m1 = 1; θ1 = −0.7·(1 + 0.9·1) = −1.33
    torch.testing.assert_close(t1, torch.full((5,), -1.33))
    t2 = outer.step(d2)                  # m2 = 0.9·1 + 2 = 2.9; θ2 = θ1 − 0.7·(2 + 0.9·2.9) = −1.33 − 3.227
    torch.testing.assert_close(t2, torch.full((5,), -1.33 - 3.227))


@pytest.mark.parametrize("name", ["fedavg", "fedmom", "nesterov"])
def test_outer_step_never_writes_the_callers_pseudo_gradient(name, monkeypatch):
    # torch picks its multi-tensor SGD for CUDA tensors, and that path adds the momentum into the gradient in
    # place under Nesterov: emulate the CUDA choice on this CPU machine, as torch's own default would make it
    import torch.optim.sgd as sgd
    monkeypatch.setattr(sgd, "_default_to_fused_or_foreach", lambda *a, **k: (False, True))
    outer = OuterOptimizer(torch.zeros(5), OuterConfig(name=name, lr=0.7, momentum=0.9))
    deltas = [torch.ones(5), 2 * torch.ones(5)]
    for d in deltas:
        outer.step(d)
    torch.testing.assert_close(deltas[0], torch.ones(5), rtol=0, atol=0)
    torch.testing.assert_close(deltas[1], 2 * torch.ones(5), rtol=0, atol=0)
    expect = {"fedavg": -0.7 * 3, "fedmom": -0.7 * (1 + 2.9), "nesterov": -1.33 - 3.227}[name]
    torch.testing.assert_close(outer.params, torch.full((5,), expect))


def test_momentum_warmup_ramps_beta_and_survives_a_resume():
    cfg = OuterConfig(name="nesterov", lr=0.7, momentum=0.9, momentum_warmup=2)
    outer = OuterOptimizer(torch.zeros(3), cfg)
    # step 0: β 0 (FedAvg at lr 0.7); step 1: β 0.45, buffer starts at Δ; step 2 on: β 0.9
    expect = [-0.7, -0.7 - 0.7 * (2 + 0.45 * 2), -2.73 - 0.7 * (3 + 0.9 * (0.9 * 2 + 3))]
    for d, e in zip((1.0, 2.0, 3.0), expect):
        outer.step(torch.full((3,), d))
        torch.testing.assert_close(outer.params, torch.full((3,), e))
    assert [outer.momentum_at(s) for s in (0, 1, 2, 9)] == [0.0, 0.45, 0.9, 0.9]
    # a run interrupted after step 1 and resumed from its state ends where the uninterrupted one does
    a = OuterOptimizer(torch.zeros(3), cfg)
    a.step(torch.full((3,), 1.0))
    b = OuterOptimizer(torch.zeros(3), cfg)
    b.load_state_dict(a.state_dict())
    for d in (2.0, 3.0):
        b.step(torch.full((3,), d))
    torch.testing.assert_close(b.params, outer.params, rtol=0, atol=0)
    old = a.state_dict()
    del old["steps"]                      # a checkpoint from before the warmup existed: refused, not restarted
    with pytest.raises(ValueError, match="outer step count"):
        OuterOptimizer(torch.zeros(3), cfg).load_state_dict(old)


@pytest.mark.parametrize("kw, msg", [({"name": "fedavg", "momentum_warmup": 3}, "fedavg has none"),
                                     ({"name": "nesterov", "momentum_warmup": -1}, "int >= 0"),
                                     ({"name": "nesterov", "momentum_warmup": 2.5}, "int >= 0")])
def test_momentum_warmup_config_is_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        OuterConfig(**kw)


def test_optimizer_state_survives_rounds(trainer):
    theta0 = get_flat(trainer.raw_model).clone()
    ht = trainer.new_holder(7, _data(7), seed=1, total_steps=20)
    ht.train_round(theta0)
    state = ht.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 3 for s in state.values())
    ht.train_round(theta0)
    assert all(int(s["step"]) == 6 for s in ht.optimizer.state_dict()["state"].values())
    assert ht.step == 6


def test_reset_optimizer_option():
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    tr = LocalTrainer(model, TrainConfig(local_steps=2, batch_size=4, reset_optimizer=True, accelerator="cpu"))
    theta0 = get_flat(model).clone()
    ht = tr.new_holder(0, _data(0), seed=1, total_steps=10)
    ht.train_round(theta0)
    ht.train_round(theta0)
    assert all(int(s["step"]) == 2 for s in ht.optimizer.state_dict()["state"].values())


def test_holder_state_roundtrip_is_bit_identical():
    def run(split: bool):
        model = build_model("tiny", vocab_size=64, seq_len=16, seed=3)
        tr = LocalTrainer(model, TrainConfig(local_steps=2, batch_size=4, accelerator="cpu"))
        theta = get_flat(model).clone()
        ht = tr.new_holder(1, _data(1), seed=5, total_steps=10)
        d1 = ht.train_round(theta).delta
        if split:
            st = ht.state_dict()
            ht = tr.new_holder(1, _data(1), seed=5, total_steps=10)
            ht.load_state_dict(st)
        return d1, ht.train_round(theta - d1).delta
    a, b = run(False), run(True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("clip", [0.5, 100.0])
@pytest.mark.parametrize("micro", [4, 3, 1])
def test_micro_batches_give_the_whole_batchs_gradient_and_loss(micro, clip):
    """train.micro_batch_size (gradient accumulation): a step of batch 8 in slices of 4, 3 (3 + 3 + 2: uneven)
    or 1 hands the optimizer the whole batch's gradient — after grad_clip, which must bind on the whole
    gradient, not per slice (clip 0.5 binds; clip 100 does not, so a scale error shows) — and reports the
    whole batch's mean loss. (Gradients, not the AdamW
    step: AdamW is blind to a uniform scale error, and amplifies the summation-order noise of near-zero
    coordinates.)"""
    class Recorder(torch.optim.SGD):     # the optimizer's place: keeps the gradient .step() was handed
        def __init__(self, params):
            super().__init__(params, lr=0.0)
            self.grads = None

        def step(self, closure=None):
            self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]

    x = _data(1, n=8)

    def step(micro):
        model = build_model("tiny", vocab_size=64, seq_len=16, seed=3)
        tr = LocalTrainer(model, TrainConfig(batch_size=8, grad_clip=clip, micro_batch_size=micro,
                                             accelerator="cpu", precision="32-true"))
        rec = Recorder(model.parameters())
        loss = tr._train_step(rec, x)
        return float(loss), torch.cat([g.flatten() for g in rec.grads])
    (l_whole, g_whole), (l_sliced, g_sliced) = step(None), step(micro)
    assert (abs(g_whole.norm() - 0.5) < 1e-4) == (clip == 0.5)   # 0.5 binds on the whole batch; 100 does not
    torch.testing.assert_close(g_sliced, g_whole, rtol=1e-4, atol=1e-7)
    assert abs(l_sliced - l_whole) < 1e-5


def test_micro_batch_size_is_checked():
    from securefed.training.config import DPSGDConfig

    with pytest.raises(ValueError, match=">= 1"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(TypeError, match="int or null"):
        TrainConfig(micro_batch_size=2.5)
    with pytest.raises(ValueError, match="dp_sgd.micro_batch_size"):
        TrainConfig(micro_batch_size=4, dp_sgd=DPSGDConfig(enabled=True))


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.25)
    assert lr_at(cfg, 3, 100) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 100) == pytest.approx(0.1)


def test_presets_shapes_and_errors():
    assert get_preset("125m").d_model == 768 and get_preset("125m").n_layers == 12
    assert get_preset("1.3b").d_model == 2048 and get_preset("1.3b").n_heads == 16
    tiny = build_model("tiny", vocab_size=4096, seq_len=128, seed=0)
    assert 1_000_000 <= count_parameters(tiny) <= 5_000_000
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("13b")
    with pytest.raises(ValueError, match="local_steps"):
        TrainConfig(local_steps=0)
    assert set(PRESETS) == {"tiny", "20m", "75m", "125m", "350m", "1.3b", "2.7b", "7b"}


def test_set_flat_rejects_wrong_size():
    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    with pytest.raises(ValueError, match="parameters"):
        set_flat(model, torch.zeros(10))


def test_dp_sgd_round_accounts_and_persists():
    from securefed.training.trainer import DPSGDConfig

    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    cfg = TrainConfig(local_steps=3, batch_size=4, accelerator="cpu",
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=0.5))
    tr = LocalTrainer(model, cfg)
    theta = get_flat(model).clone()
    ht = tr.new_holder(1, _data(1, n=40), seed=0, total_steps=10)
    upd = ht.train_round(theta)
    assert upd.record_epsilon is not None and 0 < upd.record_epsilon < float("inf")
    eps1 = upd.record_epsilon
    assert ht.train_round(theta).record_epsilon > eps1          # spend accumulates over rounds
    assert torch.isfinite(upd.delta).all() and upd.delta.abs().sum() > 0
    # the accountant's state survives a checkpoint round trip
    st = ht.state_dict()
    ht2 = tr.new_holder(1, _data(1, n=40), seed=0, total_steps=10)
    ht2.load_state_dict(st)
    assert ht2.accountant.get_epsilon(1e-5) == pytest.approx(ht.accountant.get_epsilon(1e-5))


def test_dp_sgd_randomness_is_secret_not_the_public_seed():
    from securefed.training.trainer import DPSGDConfig

    model = build_model("tiny", vocab_size=64, seq_len=16, seed=0)
    cfg = TrainConfig(local_steps=2, batch_size=4, accelerator="cpu",
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=0.5))
    tr = LocalTrainer(model, cfg)
    theta = get_flat(model).clone()
    data = _data(1, n=40)

    def delta(**kw):
        return tr.new_holder(1, data, seed=0, total_steps=10, **kw).train_round(theta).delta

    # same public seed, no secret given: batches and noise differ (64 OS-random bits each)
    assert not torch.equal(delta(), delta())
    # an explicit secret replays exactly (tests), and another secret does not
    assert torch.equal(delta(dp_secret_seed=7), delta(dp_secret_seed=7))
    assert not torch.equal(delta(dp_secret_seed=7), delta(dp_secret_seed=8))
