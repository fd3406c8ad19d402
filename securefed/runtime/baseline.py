"""Centralized baseline: the same model init, the union of the holders' data, the same inner optimizer
and schedule shape (at ``baseline_lr`` when set, else the holders' lr), trained to exactly the token
counts at which the federated run was evaluated.

Its batch is by default the federation's global batch (cohort size x holder batch), i.e. what
data-parallel training over the same holders would use: the comparison the paper makes.

It shows its steps: the run's progress gets a "baseline" phase of ``total_steps`` steps (a terminal
bar, or a line every few seconds plus heartbeats in a log file), so a long baseline is never silent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch

from securefed.progress import Progress
from securefed.training.flat import get_flat
from securefed.training.models import build_model
from securefed.training.trainer import LocalTrainer

__all__ = ["BaselineData", "baseline_lr_and_batch", "run_centralized_baseline"]

# steps per trainer call: small enough for a live step count, large enough that the per-call cost
# (one copy of θ in, one Δ out) stays negligible next to the steps themselves
_MAX_UPDATES = 200


class BaselineData(Protocol):
    central_train: torch.Tensor  # (N, seq_len) LongTensor: the union of the holders' training rows
    eval_global: torch.Tensor    # (M, seq_len): the global held-out rows
    tokenizer: object            # len(tokenizer) is the vocabulary size


def baseline_lr_and_batch(cfg) -> tuple[float, int]:
    """The baseline's inner lr and batch: ``baseline_lr`` / ``baseline_batch_size``, else the holders'
    lr and the federation's global batch (cohort size x holder batch)."""
    lr = cfg.train.lr if cfg.baseline_lr is None else float(cfg.baseline_lr)
    return lr, cfg.baseline_batch_size or cfg.federation.cohort_size * cfg.train.batch_size


def run_centralized_baseline(cfg, data: BaselineData, token_points: list[int], *, progress: Progress) -> list[dict]:
    """Train one model on ``data.central_train`` and evaluate it at each of ``token_points`` (the
    federated run's eval points). One row per point: step, tokens_seen, train_loss (mean over the
    steps since the previous point), eval_loss, eval_ppl. Runs inside ``progress.phase("baseline")``."""
    if not token_points:
        return []
    rows = data.central_train
    lr, batch = baseline_lr_and_batch(cfg)
    tokens_per_step = batch * rows.shape[1]
    total_steps = max(1, math.ceil(token_points[-1] / tokens_per_step))
    chunk = max(1, math.ceil(total_steps / _MAX_UPDATES))
    curve: list[dict] = []
    with progress.phase("baseline", total=total_steps, label="centralized baseline") as task:
        model = build_model(cfg.model.preset, vocab_size=len(data.tokenizer), seq_len=cfg.data.seq_len, seed=cfg.seed,
                            init_from=cfg.model.init_from)   # the federated run's θ0, whichever it is
        # one centralized trajectory keeps one AdamW state: never reset between the chunks below
        train_cfg = dataclasses.replace(cfg.train, batch_size=batch, lr=lr, reset_optimizer=False)
        trainer = LocalTrainer(model, train_cfg)
        theta = get_flat(model)
        holder = trainer.new_holder(0, rows, seed=cfg.seed, total_steps=total_steps, local_steps=1)
        done = 0
        for tokens in token_points:
            target = max(done, math.ceil(tokens / tokens_per_step))
            loss_sum, steps = 0.0, 0
            while done < target:
                holder.local_steps = min(chunk, target - done)
                upd = holder.train_round(theta)
                theta = get_flat(trainer.raw_model)  # continue exactly where the chunk ended
                done += upd.steps
                loss_sum += upd.mean_loss * upd.steps
                steps += upd.steps
                task.advance(upd.steps)
            loss = trainer.evaluate(data.eval_global)
            ppl = math.exp(loss) if loss < 700.0 else math.inf   # beyond float range: ∞, not e^700
            task.note(f"eval ppl {ppl:.1f} at {done * tokens_per_step:,} tokens")
            curve.append({"step": done, "tokens_seen": done * tokens_per_step,
                          "train_loss": loss_sum / steps if steps else None, "eval_loss": loss, "eval_ppl": ppl})
    return curve
