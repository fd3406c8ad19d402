"""train.strategy / train.activation_checkpointing validation, the shard layout arithmetic and the
computed per-GPU memory of the 2.7b/7b presets (issue 17). No processes, no torch distributed."""

import pytest

from securefed.configio import ConfigError
from securefed.runtime.config import load_run_config
from securefed.training.config import DPSGDConfig, TrainConfig, get_preset
from securefed.training.memory import estimate, parameters
from securefed.training.sharded import shard_layout


@pytest.mark.parametrize("kw, exc, match", [
    ({"strategy": "fsdp"}, ValueError, "needs train.devices >= 2"),
    ({"strategy": "ddp"}, ValueError, "needs train.devices >= 2"),
    ({"strategy": "zero3", "devices": 2}, ValueError, "train.strategy must be"),
    ({"strategy": "fsdp", "devices": 2, "dp_sgd": DPSGDConfig(enabled=True)}, ValueError, "dp_sgd"),
    ({"strategy": "fsdp", "devices": 2, "precision": "16-mixed"}, ValueError, "bf16-mixed"),
    ({"strategy": "fsdp", "devices": 2, "compile": True, "compile_scope": "model"}, ValueError, "compile_scope"),
    ({"activation_checkpointing": "yes"}, TypeError, "activation_checkpointing"),
    ({"activation_checkpointing": True, "dp_sgd": DPSGDConfig(enabled=True)}, ValueError, "dp_sgd"),
])
def test_train_strategy_settings_are_validated(kw, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**kw)


def test_strategy_is_a_run_setting():
    cfg = load_run_config(overrides=["train.devices=4", "train.strategy=fsdp", "train.activation_checkpointing=true"])
    assert (cfg.train.strategy, cfg.train.devices, cfg.train.activation_checkpointing) == ("fsdp", 4, True)
    with pytest.raises((ConfigError, ValueError)):
        load_run_config(overrides=["train.strategy=fsdp"])       # one device: nothing to shard over
    for name, model in (("gpu-2.7b", "2.7b"), ("gpu-7b", "7b")):
        c = load_run_config(preset=name)
        assert c.model.preset == model and c.train.strategy == "fsdp" and c.train.devices == 8


def test_shard_layout_follows_torch_chunk_on_dim0():
    # (5, 3) over 2 ranks: ⌈5/2⌉ = 3 rows, then 2 → flat [0, 9) and [9, 15); (4,) over 3: 2, 2, 0 rows
    pieces = shard_layout([(5, 3), (4,)], 2)
    assert [(p.rank, p.lo, p.hi) for p in pieces] == [(0, 0, 9), (1, 9, 15), (0, 15, 17), (1, 17, 19)]
    three = shard_layout([(4,)], 3)
    assert [(p.rank, p.start, p.stop) for p in three] == [(0, 0, 2), (1, 2, 4)]   # rank 2 holds nothing
    replicated = shard_layout([(5, 3), (4,)], 2, [True, False])
    assert [(p.rank, p.lo, p.hi) for p in replicated][-1] == (0, 15, 19)
    # the pieces tile [0, P) in order, whatever the world size
    for world in (1, 2, 3, 8):
        ps = shard_layout([(67, 24), (24,), (64, 24), (1,)], world)
        assert ps[0].lo == 0 and all(a.hi == b.lo for a, b in zip(ps, ps[1:])) and ps[-1].hi == 67 * 24 + 24 + 64 * 24 + 1


def test_parameter_counts_match_the_built_models():
    # models.parameter_count on the meta device, vocabulary 32768 (the GPU corpus' tokenizer)
    assert parameters(get_preset("1.3b"), 32768)[0] == 1_348_569_088
    assert parameters(get_preset("2.7b"), 32768)[0] == 2_689_763_840
    assert parameters(get_preset("7b"), 32768)[0] == 6_719_541_248


def test_memory_per_gpu_of_the_7b_preset():
    P = 6_719_541_248
    e = estimate("7b", vocab_size=32768, seq_len=2048, batch_per_gpu=4, gpus=8, activation_checkpointing=True)
    assert e.states == 16 * P // 8                               # 13.44 GB: fp32 θ, grads, 2 AdamW moments / 8
    sbd = 2048 * 4 * 4096
    assert e.activations == 2 * sbd * 32 + 34 * sbd              # layer inputs kept + one layer recomputed
    layer = 4 * 4096**2 + 3 * 4096 * 10944 + 2 * 4096            # 201,596,928
    assert e.transient == 8 * layer + 2 * (2 * 32768 * 4096 + 4096)
    no_ac = estimate("7b", vocab_size=32768, seq_len=2048, batch_per_gpu=4, gpus=8)
    assert no_ac.activations == 34 * sbd * 32 and no_ac.total > e.total
    single = estimate("7b", vocab_size=32768, seq_len=2048, batch_per_gpu=4, strategy="single")
    assert single.states == 16 * P and single.transient == 0
    with pytest.raises(ValueError):
        estimate("7b", vocab_size=32768, seq_len=2048, batch_per_gpu=4, gpus=2, strategy="single")
