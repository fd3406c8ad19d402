"""The training layer's configs, importable without torch, transformers or lightning.

`securefed simulate` validates a whole RunConfig before it imports anything heavy, so a typo is
refused in well under a second instead of after torch has loaded (10–45 s on a busy machine). The
dataclasses are re-exported from where they are used: ``securefed.training.trainer`` (TrainConfig,
DPSGDConfig), ``securefed.training.models`` (ModelPreset, PRESETS, get_preset) and
``securefed.training.outer`` (OuterConfig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DPSGDConfig", "TrainConfig", "OuterConfig", "ModelPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class DPSGDConfig:
    """Optional record-level DP-SGD inside each holder (Opacus; securefed.privacy.dpsgd).

    Batches are then Poisson-sampled (each sequence with probability batch_size / N), each sequence's
    gradient is clipped to max_grad_norm and Gaussian noise N(0, (σ·max_grad_norm)²) is added per step;
    the holder's own RDP accountant gives its record-level ε at ``delta``.

    ``clipping`` says how each sequence's gradient norm is found; the guarantee is the same either way:
      per_sample  Opacus' per-sample gradients (GradSampleModule): B copies of every parameter's gradient
      ghost       Opacus' ghost / fast gradient clipping (securefed.privacy.ghost): per-sample *norms*
                  layer by layer, the clipped sum by book-keeping; never B copies of the model's gradient
    ``micro_batch_size`` (ghost only): the Poisson batch (expected ``batch_size`` sequences) is run in
    slices of at most this many, their clipped gradients summed, and noised once: one accounted step.

    ``unit`` says what one protected record is (protocols/dp.md §10.2):
      sequence  one training row of seq_len tokens. Rows are packed from the joined documents, so a document
                longer than a row, or one that shares a row, is NOT one record: no guarantee is stated for it
      document  one document of the holder's data (a patient's note, a source file): each document gets rows
                of its own (its last one right-padded, never shared), documents are Poisson-sampled whole,
                and each of a document's k rows is clipped to max_grad_norm / k, so one document moves the
                clipped sum by at most max_grad_norm. δ is then set against the holder's document count
      group     all of the holder's documents with the same data.unit_field value (a patient id, JSONL /
                Parquet): as document, with a group's rows sampled, counted and clipped together
    ``max_rows_per_document`` (unit=document): a document longer than this many rows is cut to them (its
    other rows would only shrink every row's clip bound); null keeps whole documents.
    ``sample_rate`` (protocols/dp.md §10.3): a public Poisson rate q. Unset, q = batch_size / N, where N is the
    holder's row count — a function of its data that the record-level ε (sent to the coordinator with every
    round, and signed in each release) gives away. Set, q is this number and batch_size only scales the noised
    sum (a public constant), so nothing the holder sends depends on N except through the noised updates.
    ``hide_batch_size`` (clipping=ghost; protocols/dp.md §10.4): every step runs the same padded batch, so its
    compute, and the time a holder's reply takes, does not show how many records the Poisson draw took (the
    accountant assumes the batch size is secret). The padded batch is the size a Poisson batch exceeds with
    probability <= 10⁻¹⁵ a step (privacy.dpsgd.padded_batch_rows); it costs that much more compute a step
    (≈ 8.5–9.6 standard deviations above the expected batch: +19 % at 2,048 of 61,074 rows, 2.2× at 64).
    ``epsilon_cap`` (protocols/dp.md §10.5): the most record-level ε (at ``delta``) this holder spends in a run.
    The coordinator chooses the batch size, the local steps and the rounds, so without a cap it chooses the
    holder's record-level ε; with one, the holder refuses any round whose DP-SGD steps would take its ε above it,
    before it trains (its accountant counts steps trained whether or not they are released).
    ``adam_bias_correction`` (protocols/dp.md §10.6): AdamW's second moment less the noise's known variance
    Φ = (σ·C/B)², floored at ``adam_bc_floor_ratio``·Φ (DP-AdamBC, securefed.privacy.dp_adam): post-processing,
    no ε changes.
    """

    enabled: bool = False
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    clipping: Literal["per_sample", "ghost"] = "per_sample"
    micro_batch_size: int | None = None
    unit: Literal["sequence", "document", "group"] = "sequence"
    max_rows_per_document: int | None = None
    sample_rate: float | None = None
    hide_batch_size: bool = False
    epsilon_cap: float | None = None
    adam_bias_correction: bool = False
    adam_bc_floor_ratio: float = 0.1

    @property
    def whole_units(self) -> bool:
        """DP-SGD on, one record = a document or a group: rows packed per document, units sampled whole (§10.2)."""
        return self.enabled and self.unit in ("document", "group")

    def padded_batch(self, batch_size: int) -> int | None:
        """hide_batch_size: the rows every step's Poisson batch is padded to at least (dp.md §10.4), from public
        numbers only — the configured batch and 1 row per record, or max_rows_per_document per document (which
        __post_init__ requires; it refuses unit=group); the trainer rounds it up to whole slices. None when not
        hiding."""
        if not (self.enabled and self.hide_batch_size):
            return None
        k = self.max_rows_per_document if self.unit == "document" else 1
        from securefed.privacy.dpsgd import padded_batch_rows

        return padded_batch_rows(batch_size, k)

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"train.dp_sgd.{name} must be a number, got {v!r}")
            if not math.isfinite(v):   # NaN passes every comparison below; inf noise or clip is no mechanism either
                raise ValueError(f"train.dp_sgd.{name} must be finite, got {v}")
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError("train.dp_sgd: noise_multiplier >= 0, max_grad_norm > 0 and 0 < delta < 1 required")
        if self.epsilon_cap is not None:
            c = self.epsilon_cap
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
                raise ValueError(f"train.dp_sgd.epsilon_cap must be a finite number > 0 or null, got {c!r}")
        if self.clipping not in ("per_sample", "ghost"):
            raise ValueError(f"train.dp_sgd.clipping must be 'per_sample' or 'ghost', got {self.clipping!r}")
        if self.micro_batch_size is not None:
            if isinstance(self.micro_batch_size, bool) or not isinstance(self.micro_batch_size, int):
                raise TypeError(f"train.dp_sgd.micro_batch_size must be an int or null, got {self.micro_batch_size!r}")
            if self.micro_batch_size < 1:
                raise ValueError(f"train.dp_sgd.micro_batch_size must be >= 1, got {self.micro_batch_size}")
            if self.clipping != "ghost":
                raise ValueError("train.dp_sgd.micro_batch_size needs train.dp_sgd.clipping=ghost (per_sample "
                                 "mode takes each Poisson batch in one piece)")
        if self.sample_rate is not None:
            q = self.sample_rate
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 1:
                raise ValueError(f"train.dp_sgd.sample_rate must be a number in (0, 1] or null, got {q!r}")
        if not isinstance(self.hide_batch_size, bool):
            raise TypeError(f"train.dp_sgd.hide_batch_size must be true or false, got {self.hide_batch_size!r}")
        if self.hide_batch_size and self.unit == "group":
            raise ValueError("train.dp_sgd.hide_batch_size cannot pad unit=group: a person may have any number of "
                             "documents, so no public number bounds a group's rows and the padded batch would depend "
                             "on the holder's data (dp.md §10.4); use unit=document with max_rows_per_document")
        if self.hide_batch_size and self.unit == "document" and self.max_rows_per_document is None:
            raise ValueError("train.dp_sgd.hide_batch_size with unit=document needs train.dp_sgd.max_rows_per_document: "
                             "the padded batch must not depend on how long the holder's documents are (dp.md §10.4)")
        if self.hide_batch_size and self.clipping != "ghost":
            raise ValueError("train.dp_sgd.hide_batch_size needs train.dp_sgd.clipping=ghost (it pads each step's "
                             "Poisson batch with masked rows in ghost-clipping slices)")
        if self.unit not in ("sequence", "document", "group"):
            raise ValueError(f"train.dp_sgd.unit must be 'sequence', 'document' or 'group', got {self.unit!r}")
        if not isinstance(self.adam_bias_correction, bool):
            raise TypeError(f"train.dp_sgd.adam_bias_correction must be true or false, got {self.adam_bias_correction!r}")
        if self.adam_bias_correction and not self.enabled:   # a setting that would do nothing: never quietly
            raise ValueError("train.dp_sgd.adam_bias_correction needs train.dp_sgd.enabled=true (it takes DP-SGD's "
                             "noise variance out of AdamW's second moment; without DP-SGD there is none)")
        f = self.adam_bc_floor_ratio
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
            raise ValueError(f"train.dp_sgd.adam_bc_floor_ratio must be a finite number > 0, got {f!r}")
        if self.max_rows_per_document is not None:
            m = self.max_rows_per_document
            if isinstance(m, bool) or not isinstance(m, int):
                raise TypeError(f"train.dp_sgd.max_rows_per_document must be an int or null, got {m!r}")
            if m < 1:
                raise ValueError(f"train.dp_sgd.max_rows_per_document must be >= 1, got {m}")
            if self.unit == "sequence":
                raise ValueError("train.dp_sgd.max_rows_per_document applies to train.dp_sgd.unit=document or group only")


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = 16                      # K, inner steps per round
    batch_size: int = 16                       # sequences per inner step
    # gradient accumulation: the step's batch_size sequences go through in slices of at most this many, their
    # gradients summed into the one optimizer step (the same step, a slice's activation memory). Non-private
    # steps only: DP-SGD slices its Poisson batch with dp_sgd.micro_batch_size (one noised, accounted step).
    # Under ddp / fsdp each slice's backward synchronises its gradient: correct, not the cheapest
    micro_batch_size: int | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1                  # cosine floor, as a fraction of lr
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0                     # inner-step gradient norm clip (not the DP clip)
    reset_optimizer: bool = False              # Photon option: fresh AdamW state every round
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = 1
    # a holder on several GPUs (devices > 1): "ddp" replicates the model on each, "fsdp" shards parameters,
    # gradients and AdamW state over them (FSDP2, securefed.training.sharded); "auto": Fabric's choice
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    activation_checkpointing: bool = False     # recompute each decoder layer's activations in backward
    compile: bool = False                      # regional torch.compile of the decoder blocks (see compile_scope)
    compile_scope: Literal["blocks", "model"] = "blocks"   # "model": the whole model (not with Liger's loss)
    fused: Literal["auto", "all", "head", "off"] = "auto"  # Liger kernels on CUDA (securefed.training.fused)
    sdpa_backend: Literal["auto", "cudnn", "flash"] = "auto"  # preferred attention kernel on CUDA
    eval_batch_size: int = 32
    # simulate's holders: where w·Δ is clipped and rounded for secure aggregation (the holder's
    # hardware.encode_on): "auto" on the training GPU, "device" on the training device, "host" with numpy
    encode_on: Literal["auto", "device", "host"] = "auto"
    dp_sgd: DPSGDConfig = field(default_factory=DPSGDConfig)

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"train.local_steps (K) must be >= 1, got {self.local_steps}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None:
            if isinstance(self.micro_batch_size, bool) or not isinstance(self.micro_batch_size, int):
                raise TypeError(f"train.micro_batch_size must be an int or null, got {self.micro_batch_size!r}")
            if self.micro_batch_size < 1:
                raise ValueError(f"train.micro_batch_size must be >= 1, got {self.micro_batch_size}")
            if self.dp_sgd.enabled:
                raise ValueError("train.micro_batch_size slices non-private steps; with DP-SGD set "
                                 "train.dp_sgd.micro_batch_size (clipping=ghost) instead")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("train.min_lr_ratio must be in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("train.warmup_steps, grad_clip and weight_decay must be >= 0")
        if self.devices < 1 or self.eval_batch_size < 1:
            raise ValueError("train.devices and train.eval_batch_size must be >= 1")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"train.strategy must be 'auto', 'ddp' or 'fsdp', got {self.strategy!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise TypeError(f"train.activation_checkpointing must be true or false, got {self.activation_checkpointing!r}")
        if self.strategy == "ddp" and self.devices < 2:
            # Fabric would fail later with "call .launch()": a one-device holder has nothing to replicate over
            raise ValueError("train.strategy=ddp replicates the holder over devices: it needs train.devices >= 2 "
                             "(one device: train.strategy=auto)")
        if self.strategy == "fsdp":
            if self.devices < 2:
                raise ValueError("train.strategy=fsdp shards the holder over devices: it needs train.devices >= 2")
            if self.dp_sgd.enabled:
                raise ValueError("train.strategy=fsdp cannot be combined with train.dp_sgd (Opacus' per-sample "
                                 "gradients need whole parameters)")
            if self.precision not in ("auto", "32-true", "bf16-mixed"):
                raise ValueError(f"train.strategy=fsdp supports precision auto, 32-true or bf16-mixed (fp32 shards, "
                                 f"bf16 compute), got {self.precision!r}")
            if self.compile and self.compile_scope == "model":
                raise ValueError("train.strategy=fsdp compiles decoder blocks only: use train.compile_scope=blocks")
        if self.activation_checkpointing and self.dp_sgd.enabled:
            raise ValueError("train.activation_checkpointing cannot be combined with train.dp_sgd (Opacus' hooks)")
        if self.compile_scope not in ("blocks", "model"):
            raise ValueError(f"train.compile_scope must be 'blocks' or 'model', got {self.compile_scope!r}")
        if self.fused not in ("auto", "all", "head", "off"):
            raise ValueError(f"train.fused must be 'auto', 'all', 'head' or 'off', got {self.fused!r}")
        if self.encode_on not in ("auto", "device", "host"):
            raise ValueError(f"train.encode_on must be 'auto', 'device' or 'host', got {self.encode_on!r}")
        if self.sdpa_backend not in ("auto", "cudnn", "flash"):
            raise ValueError(f"train.sdpa_backend must be 'auto', 'cudnn' or 'flash', got {self.sdpa_backend!r}")
        if self.compile and self.dp_sgd.enabled:
            raise ValueError("train.compile cannot be combined with train.dp_sgd (Opacus' per-sample hooks)")
        if self.dp_sgd.enabled and self.precision in ("16-mixed", "bf16-true"):
            # 16-mixed: fp16 loss scaling skips steps on overflow, outside the accountant (and ghost runs its own
            # backward without the scaler); bf16-true: the clipped sum and its noise would live in bf16, whose
            # rounding grows with the whole batch's sum, not with one record's share (protocols/dp.md §10)
            raise ValueError(f"train.dp_sgd cannot run at precision {self.precision}: use bf16-mixed (fp32 parameters, "
                             "clipped sums and noise) or 32-true")
        if self.dp_sgd.enabled and self.dp_sgd.clipping == "per_sample" and self.precision == "bf16-mixed":
            # Opacus' per-sample path takes the batch's *mean* loss and multiplies each record's backprop by the
            # batch size: under bf16 autocast that rounding depends on the batch, so every record's clipped
            # gradient moves when one record joins (measured: 0.3·C summed over 256 aligned records)
            raise ValueError("train.dp_sgd.clipping=per_sample under bf16 autocast lets the batch size move every "
                             "record's rounded gradient: use clipping=ghost (per-record losses) or precision 32-true "
                             "('auto' picks 32-true for per_sample)")
        if self.dp_sgd.enabled and self.devices > 1:
            # each rank would draw its own Poisson batch and its own noise: neither the sampling nor the noise
            # the accountant assumes
            raise ValueError("train.dp_sgd runs on one device per holder (train.devices=1); use "
                             "dp_sgd.micro_batch_size (clipping=ghost) for large batches")
        if self.compile and self.compile_scope == "model" and self.fused in ("all", "head"):
            raise ValueError("train.compile_scope=model breaks Liger's fused loss: use compile_scope=blocks "
                             "or train.fused=off")


@dataclass(frozen=True)
class OuterConfig:
    name: Literal["fedavg", "fedmom", "nesterov"] = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9          # ignored by fedavg
    # outer steps over which the momentum rises linearly from 0 to `momentum` (0: full momentum from the first
    # step). Early pseudo-gradients are the largest of a run from scratch, and momentum keeps applying each
    # one for ~1/(1-β) rounds: benchmarks/RESULTS.md (s14)
    momentum_warmup: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"outer.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"outer.momentum must be in [0, 1), got {self.momentum}")
        if isinstance(self.momentum_warmup, bool) or not isinstance(self.momentum_warmup, int) \
                or self.momentum_warmup < 0:
            raise ValueError(f"outer.momentum_warmup must be an int >= 0, got {self.momentum_warmup!r}")
        if self.momentum_warmup and self.name == "fedavg":
            raise ValueError(f"outer.momentum_warmup={self.momentum_warmup} ramps the outer momentum, and fedavg "
                             "has none: use outer.name=nesterov or fedmom, or --set outer.momentum_warmup=0")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    max_seq_len: int
    tie_embeddings: bool = True

    @property
    def ffn_dim(self) -> int:
        # SwiGLU hidden size 8/3·d, rounded up to a multiple of 64 (tensor-core friendly)
        return ((8 * self.d_model // 3) + 63) // 64 * 64


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("tiny", d_model=128, n_layers=4, n_heads=4, max_seq_len=512),
        ModelPreset("20m", d_model=384, n_layers=6, n_heads=6, max_seq_len=2048),
        ModelPreset("75m", d_model=640, n_layers=10, n_heads=10, max_seq_len=2048),
        ModelPreset("125m", d_model=768, n_layers=12, n_heads=12, max_seq_len=2048),
        ModelPreset("350m", d_model=1024, n_layers=24, n_heads=16, max_seq_len=2048),
        ModelPreset("1.3b", d_model=2048, n_layers=24, n_heads=16, max_seq_len=2048, tie_embeddings=False),
        # Photon's larger sizes (issue 17): holders bigger than one GPU, trained under train.strategy=fsdp
        ModelPreset("2.7b", d_model=2560, n_layers=32, n_heads=32, max_seq_len=2048, tie_embeddings=False),
        ModelPreset("7b", d_model=4096, n_layers=32, n_heads=32, max_seq_len=2048, tie_embeddings=False),
    )
}


def get_preset(name: str) -> ModelPreset:
    if not isinstance(name, str):
        raise TypeError("model preset must be a string")
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
