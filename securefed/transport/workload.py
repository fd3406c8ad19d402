"""What a networked round trains: the tiny LM (real) or a synthetic update (load tests, benchmarks).

Server side: the global flat vector θ and the outer optimizer; holder side: θ → Δ. The LM workloads
reuse the simulation's pieces (model presets, Fabric local trainer, outer optimizer, data pipeline);
the synthetic ones need neither torch training nor data, so a hundred holder processes fit on one
small machine (protocols/transport.md §9).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = ["HolderUpdate", "SyntheticServer", "SyntheticHolder", "LMServer", "LMHolder", "theta_hash"]


def theta_hash(theta_bytes: bytes) -> bytes:
    return hashlib.sha256(theta_bytes).digest()   # = securefed.training.flat.flat_hash for float32 LE


@dataclass
class HolderUpdate:
    delta: np.ndarray       # (P,) float32
    tokens: int
    mean_loss: float | None


class SyntheticServer:
    """θ ∈ R^P starts at 0; FedAvg with lr 1: θ ← θ − mean Δ."""

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError("dim must be a positive int")
        self.dim = dim
        self.theta = np.zeros(dim, dtype=np.float32)

    def theta_bytes(self) -> bytes:
        return self.theta.astype("<f4").tobytes()

    def step(self, mean_delta: np.ndarray) -> None:
        self.theta = (self.theta - mean_delta.astype(np.float32)).astype(np.float32)

    def evaluate(self) -> dict:
        return {}

    def export(self, out) -> None:
        from pathlib import Path

        Path(out).mkdir(parents=True, exist_ok=True)
        np.save(Path(out) / "theta.npy", self.theta)

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "theta": self.theta.copy()}

    def load_state_dict(self, st: dict) -> None:
        if st.get("kind") != "synthetic" or st["theta"].shape != (self.dim,):
            raise ValueError("checkpoint is not a synthetic workload of this size")
        self.theta = st["theta"].astype(np.float32)

    def holder_config(self) -> dict:
        return {"workload": "synthetic", "dim": self.dim}


class SyntheticHolder:
    """Δ_i,r = a fixed pseudo-random vector of holder i and round r (no data, no training)."""

    def __init__(self, holder_id: int, dim: int, seed: int = 0) -> None:
        self.holder_id, self.dim, self.seed = holder_id, dim, seed

    def train_round(self, theta: np.ndarray, round_index: int) -> HolderUpdate:
        if theta.shape != (self.dim,):
            raise ValueError(f"model has {theta.size} values, expected {self.dim}")
        rng = np.random.default_rng([self.seed, self.holder_id, round_index])
        return HolderUpdate(rng.standard_normal(self.dim, dtype=np.float32) * 0.01, 0, None)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, st: dict) -> None:
        pass


class LMServer:
    """The tiny Llama-style model of a RunConfig and its outer optimizer (as in runtime.simulate)."""

    def __init__(self, cfg) -> None:
        from securefed.training.data.config import default_cache_dir
        from securefed.training.data.stdlib import tokenizer_corpus
        from securefed.training.data.tokenizer import load_tokenizer, trained_tokenizer
        from securefed.training.flat import get_flat
        from securefed.training.models import build_model
        from securefed.training.outer import OuterOptimizer

        self.cfg = cfg
        if cfg.data.tokenizer == "train":   # public corpus only: the coordinator never sees holder text
            tok = trained_tokenizer(tokenizer_corpus(), vocab_size=cfg.data.vocab_size,
                                    cache_dir=default_cache_dir(cfg.data.cache_dir), progress=False)
        else:
            tok = load_tokenizer(cfg.data.tokenizer)
        model = build_model(cfg.model.preset, vocab_size=len(tok), seq_len=cfg.data.seq_len, seed=cfg.seed)
        theta0 = get_flat(model)
        self.model, self.tokenizer, self.dim = model, tok, theta0.numel()
        self.outer = OuterOptimizer(theta0, cfg.outer)

    def theta_bytes(self) -> bytes:
        return self.outer.params.numpy().astype("<f4").tobytes()

    def step(self, mean_delta: np.ndarray) -> None:
        import torch

        self.outer.step(torch.from_numpy(np.ascontiguousarray(mean_delta, dtype=np.float32)))

    def evaluate(self) -> dict:
        return {}

    def export(self, out) -> None:
        """RUN_DIR/model: loadable with transformers AutoModelForCausalLM.from_pretrained."""
        from securefed.runtime.export import export_model
        from securefed.training.flat import set_flat

        set_flat(self.model, self.outer.params)
        export_model(self.model, self.tokenizer, out)

    def state_dict(self) -> dict:
        return {"kind": "lm", "outer": self.outer.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        if st.get("kind") != "lm":
            raise ValueError("checkpoint is not an LM workload")
        self.outer.load_state_dict(st["outer"])

    def holder_config(self) -> dict:
        from securefed.configio import dump_yaml

        return {"workload": "lm", "dim": self.dim, "config_yaml": dump_yaml(self.cfg)}


class LMHolder:
    """One holder's Fabric trainer on its own shard (persistent AdamW, step counter, data cursor)."""

    def __init__(self, holder_id: int, cfg, *, shard: int | None = None) -> None:
        import math

        from securefed.training.data import prepare_federated_data
        from securefed.training.models import build_model
        from securefed.training.trainer import LocalTrainer

        fed = cfg.federation
        data = prepare_federated_data(cfg.data, n_holders=fed.n_holders, seed=cfg.seed, progress=False)
        index = (holder_id - 1) if shard is None else shard
        if not 0 <= index < fed.n_holders:
            raise ValueError(f"holder {holder_id}: no data shard {index} among {fed.n_holders}")
        model = build_model(cfg.model.preset, vocab_size=len(data.tokenizer), seq_len=cfg.data.seq_len, seed=cfg.seed)
        self.trainer = LocalTrainer(model, cfg.train)
        k = cfg.train.local_steps
        total = math.ceil(fed.rounds * fed.cohort_size / fed.n_holders) * k
        self.holder = self.trainer.new_holder(holder_id, data.holder_train[index], seed=cfg.seed, total_steps=total)

    def train_round(self, theta: np.ndarray, round_index: int) -> HolderUpdate:
        import torch

        up = self.holder.train_round(torch.from_numpy(theta.copy()))
        return HolderUpdate(up.delta.numpy(), int(up.tokens), float(up.mean_loss))

    def state_dict(self) -> dict:
        return self.holder.state_dict()

    def load_state_dict(self, st: dict) -> None:
        self.holder.load_state_dict(st)
