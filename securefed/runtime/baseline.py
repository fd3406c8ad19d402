"""Centralized baseline: the same model init, the union of the holders' data, the same inner optimizer
and schedule shape (at ``baseline_lr`` when set, else the holders' lr), trained to exactly the token
counts at which the federated run was evaluated.

Its batch is by default the federation's global batch (cohort size x holder batch), i.e. what
data-parallel training over the same holders would use: the comparison the paper makes.
"""

from __future__ import annotations

import dataclasses
import math

from securefed.training.models import build_model
from securefed.training.trainer import LocalTrainer

__all__ = ["baseline_lr_and_batch", "run_centralized_baseline"]


def baseline_lr_and_batch(cfg) -> tuple[float, int]:
    """The baseline's inner lr and batch: ``baseline_lr`` / ``baseline_batch_size``, else the holders'
    lr and the federation's global batch (cohort size x holder batch)."""
    lr = cfg.train.lr if cfg.baseline_lr is None else float(cfg.baseline_lr)
    return lr, cfg.baseline_batch_size or cfg.federation.cohort_size * cfg.train.batch_size


def run_centralized_baseline(cfg, data, token_points: list[int], *, progress) -> list[dict]:
    """``data``: .central_train (the union of the holders' rows), .eval_global, .tokenizer."""
    fd = data
    if not token_points:
        return []
    data = fd.central_train
    lr, batch = baseline_lr_and_batch(cfg)
    tokens_per_step = batch * data.shape[1]
    total_steps = max(1, math.ceil(token_points[-1] / tokens_per_step))
    model = build_model(cfg.model.preset, vocab_size=len(fd.tokenizer), seq_len=cfg.data.seq_len, seed=cfg.seed)
    trainer = LocalTrainer(model, dataclasses.replace(cfg.train, batch_size=batch, lr=lr))
    from securefed.training.flat import get_flat

    theta = get_flat(model)
    holder = trainer.new_holder(0, data, seed=cfg.seed, total_steps=total_steps, local_steps=1)
    curve, done = [], 0
    for tokens in progress.iter(token_points, "centralized baseline"):
        target = max(done, math.ceil(tokens / tokens_per_step))
        if target > done:
            holder.local_steps = target - done
            holder.train_round(theta)
            theta = get_flat(trainer.raw_model)  # continue exactly where the chunk ended
            done = target
        loss = trainer.evaluate(fd.eval_global)
        curve.append({"step": done, "tokens_seen": done * tokens_per_step, "eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0))})
    return curve
