"""The holder's local trainer (Photon's inner loop) on Lightning Fabric.

Per round a holder loads θ_global, runs K AdamW steps on its own sequences and returns the
pseudo-gradient Δ = θ_global − θ_local as a flat float32 vector (securefed.training.flat order).

GPU fast path (issue 14; securefed.training.fused): Liger's fused linear + cross-entropy loss (no
fp32 logits), Liger RMSNorm / SwiGLU / RoPE in eager blocks, regional ``torch.compile`` of the decoder
blocks (``train.compile``), an optional SDPA backend preference; θ_global goes to the device once
per round and Δ is formed there and copied out once into pinned host memory. ``train.fused: auto``
falls back to plain PyTorch wherever Liger cannot run (CPU, liger-kernel absent, DP-SGD per-sample
clipping), so the CPU path is the plain one, bit for bit; DP-SGD with ghost clipping gets the block kernels
only (mode ``blocks``: its per-record losses need the logits the fused head never forms).

Why Fabric and not ``Trainer.fit``: re-running ``fit`` with the same ``max_steps`` trains nothing
(Lightning issue #11425) and ``configure_optimizers`` would rebuild AdamW each round; Fabric gives an
explicit K-step loop while keeping Lightning's precision plugins (bf16-mixed on GPU) and strategies
(DDP or FSDP for a holder with several GPUs: ``train.strategy``). Under ``fsdp`` (issue 17,
securefed.training.sharded) the parameters, gradients and AdamW state are sharded over the holder's
GPUs; θ_global is loaded and Δ formed shard by shard, so no rank ever holds the whole model, and the
update comes back as this rank's pieces of the flat Δ (``LocalUpdate.shard``) instead of a (P,) vector.
In simulation all holders share one model object; each holder owns its AdamW instance (state persists
across rounds unless ``reset_optimizer``), its step counter (the LR schedule runs over the holder's
planned total steps) and its data cursor.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from dataclasses import dataclass

import torch
from lightning.fabric import Fabric

from securefed.training.config import DPSGDConfig, TrainConfig  # re-exported: the dataclasses live torch-free
from securefed.training.flat import set_flat
from securefed.training.sharded import ShardedDelta, fsdp_strategy, load_flat_sharded

log = logging.getLogger(__name__)

__all__ = ["DPSGDConfig", "TrainConfig", "LocalUpdate", "LocalTrainer", "HolderTrainer", "make_fabric", "resolve_precision",
           "evaluate_loss"]


def resolve_precision(cfg: TrainConfig, accelerator: str) -> str:
    """train.precision as Fabric runs it: 'auto' is bf16-mixed on CUDA, 32-true elsewhere, and 32-true for
    DP-SGD's per_sample clipping, which is exact only in fp32 (TrainConfig refuses it in bf16)."""
    if cfg.precision != "auto":
        return cfg.precision
    per_sample = cfg.dp_sgd.enabled and cfg.dp_sgd.clipping == "per_sample"
    return "bf16-mixed" if accelerator == "cuda" and not per_sample else "32-true"


def make_fabric(cfg: TrainConfig) -> Fabric:
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg, accelerator)
    strategy = cfg.strategy
    if strategy == "fsdp":   # FSDP2; its bf16 is a MixedPrecisionPolicy, so Fabric's autocast stays off
        strategy, precision = fsdp_strategy(cfg.devices, bf16=precision == "bf16-mixed"), "32-true"
    fabric = Fabric(accelerator=accelerator, devices=cfg.devices, precision=precision, strategy=strategy)
    if cfg.devices > 1:
        fabric.launch()
    return fabric


@dataclass
class LocalUpdate:
    holder_id: int
    delta: torch.Tensor | None   # (P,) float32 on CPU: θ_global − θ_local (None under fsdp: see shard)
    tokens: int
    steps: int
    mean_loss: float
    record_epsilon: float | None = None   # record-level ε of this holder's DP-SGD so far (None: off)
    shard: "ShardedDelta | None" = None   # fsdp: this rank's pieces of Δ (sharded.ShardedDelta; .to_flat() gathers)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio·lr at total_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


class LocalTrainer:
    """Owns the Fabric and the (shared) model; hands out one HolderTrainer per data holder."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, *, fabric: Fabric | None = None) -> None:
        self.cfg = cfg
        self.fabric = fabric or make_fabric(cfg)
        self.raw_model = model
        from securefed.training import fused as _fused

        scope_model = cfg.compile and cfg.compile_scope == "model"
        blocks = cfg.compile and not scope_model and _fused.is_llama(model)
        self.fused, self.fused_reason = _fused.resolve_fused(
            "off" if (scope_model or not _fused.is_llama(model)) else cfg.fused,
            device_type=self.fabric.device.type, dp_sgd=cfg.dp_sgd.enabled, compile_=blocks,
            dp_clipping=cfg.dp_sgd.clipping)
        if self.fused != "off":
            _fused.apply_liger(model, blocks=self.fused in ("all", "blocks"), head=self.fused != "blocks")
            if self.fused != cfg.fused and cfg.fused != "auto":
                log.info("train.fused=%s runs as '%s': %s", cfg.fused, self.fused, self.fused_reason)
        elif cfg.fused in ("all", "head") and self.fabric.device.type == "cuda":
            log.warning("train.fused=%s requested but not used: %s; plain PyTorch kernels", cfg.fused, self.fused_reason)
        self._sdpa = lambda: _fused.sdpa_context(cfg.sdpa_backend if self.fabric.device.type == "cuda" else "auto")
        if cfg.activation_checkpointing:
            # each decoder layer keeps only its input and recomputes the rest in backward (≈ one extra
            # forward per step for O(L·s·b·d) instead of O(L·s·b·(d + ffn)) saved bytes; README estimates)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.sharded = cfg.strategy == "fsdp"
        if blocks:
            _fused.compile_blocks(model)
        self.compiled = "blocks" if blocks else ("model" if cfg.compile else None)
        self._ghost = cfg.dp_sgd.enabled and cfg.dp_sgd.clipping == "ghost"
        # ghost DP-SGD under bf16: slices of one fixed shape (dp.md §10.1) — a kernel chosen by the batch's shape
        # rounds every record's bf16 values differently, and for aligned records those differences add up
        # (an audit: one record moved a 192-record sum by 1.104·C); in fp32 the shapes may vary
        low = resolve_precision(cfg, self.fabric.device.type) != "32-true"
        self._dp_fixed_slice = (cfg.dp_sgd.micro_batch_size or cfg.batch_size) if self._ghost and low else None
        if cfg.dp_sgd.enabled:
            from securefed.privacy.dpsgd import wrap_for_dp_sgd

            # per-sample gradients (or norms, ghost) for every holder's steps (hooks live on the shared model)
            self._gsm = wrap_for_dp_sgd(model, clipping=cfg.dp_sgd.clipping, max_grad_norm=cfg.dp_sgd.max_grad_norm)
            self.model = self.fabric.setup_module(self._gsm)
            # ghost pass 1 differentiates only to the input embedding's output: every layer's output
            # gradient (what the norm hooks need) without forming any weight gradient twice — the LM
            # head's alone costs as much as all six 20m blocks' (V = 32768 vs d = 384)
            self._emb_out: list[torch.Tensor] = []
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            if self._ghost and emb is not None:
                emb.register_forward_hook(lambda _m, _i, out: self._emb_out.append(out) if out.requires_grad else None)
        else:
            self.model = self.fabric.setup_module(model)
        self._step_fn = self._ghost_step if self._ghost else self._train_step
        self._forward = torch.compile(self.model) if self.compiled == "model" else self.model
        self._layout = [p.numel() for p in model.parameters()]

    def new_holder(self, holder_id: int, data: torch.Tensor, *, seed: int, total_steps: int,
                   local_steps: int | None = None, batch_size: int | None = None,
                   dp_secret_seed: int | None = None, units: torch.Tensor | None = None) -> "HolderTrainer":
        return HolderTrainer(self, holder_id, data, seed=seed, total_steps=total_steps,
                             local_steps=local_steps or self.cfg.local_steps,
                             batch_size=batch_size or self.cfg.batch_size, dp_secret_seed=dp_secret_seed, units=units)

    def _train_step(self, opt, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step on x (b, T). With train.micro_batch_size the batch goes through in slices whose
        losses are weighted by their share of it (every row has T tokens, so Σ (b_s/b)·mean_s is the whole
        batch's mean): the gradients sum to the whole batch's, then one clip and one step.
        ``scale`` (DP-SGD per_sample, unit=document): each row's clip bound as a fraction of max_grad_norm;
        its PAD positions are no input token and no target (dp.md §10.2)."""
        slices = x.split(self.cfg.micro_batch_size or x.shape[0])   # TrainConfig refuses it with DP-SGD
        total = torch.zeros((), device=x.device)
        for xs in slices:
            with self._sdpa():
                if scale is None:
                    loss = self._forward(input_ids=xs, labels=xs).loss
                else:
                    # the mean of each row's own mean loss: HF's token mean would divide every row's loss by the
                    # batch's real-token count, so one document's padding would move the other rows' gradients
                    from securefed.training.fused import per_record_nll

                    loss = per_record_nll(self._forward(input_ids=xs.clamp_min(0)).logits, xs).mean()
                loss = loss * (xs.shape[0] / x.shape[0]) if len(slices) > 1 else loss
                self.fabric.backward(loss)
            total += loss.detach()
        if self.cfg.grad_clip > 0 and not self.cfg.dp_sgd.enabled:  # DP-SGD clips per sample instead
            self.fabric.clip_gradients(self.model, opt, max_norm=self.cfg.grad_clip, error_if_nonfinite=False)
        if self.cfg.dp_sgd.enabled:
            opt.record_scale = scale       # read by the per-sample clip (privacy/dpsgd.py), then dropped
        try:
            opt.step()
        finally:
            if self.cfg.dp_sgd.enabled:
                opt.record_scale = None
        opt.zero_grad(set_to_none=True)
        return total

    def _ghost_step(self, opt, x: torch.Tensor, scale: torch.Tensor | None = None, *,
                    real: int | None = None) -> torch.Tensor:
        """One DP-SGD step with ghost clipping (securefed.privacy.ghost) on the Poisson batch x (b, T):
        slices of at most dp_sgd.micro_batch_size records each add their clipped gradient sum to .grad,
        then one noised, accounted step, as if the batch had gone through in one piece. ``scale``
        (unit=document): each row's clip bound as a fraction of max_grad_norm; PAD positions are masked.
        ``real`` (hide_batch_size, dp.md §10.4): only x's first ``real`` rows are records, the rest padding
        whose losses are masked to zero; every slice runs, all-padding ones too."""
        from securefed.privacy.ghost import clipped_backward
        from securefed.training.fused import per_record_nll

        total = torch.zeros((), device=x.device)
        fixed = self._dp_fixed_slice
        size = fixed or self.cfg.dp_sgd.micro_batch_size or x.shape[0]
        records = x.shape[0] if real is None else real
        scales = scale.split(size) if scale is not None else [None] * len(x.split(size))
        for i, (xs, ss) in enumerate(zip(x.split(size), scales)):
            real = min(xs.shape[0], max(0, records - i * size))   # this slice's records; the rest is padding
            if fixed and xs.shape[0] < fixed:
                # bf16: every slice has the same shape, so the same kernels round each record's values the same
                # way whoever else is in the batch (dp.md §10.1); the padding rows' losses are masked to zero.
                # Padded to `fixed` rows from the rows it HAS (hide_batch_size's slices arrive full, some of them
                # padding): never from `real`, which would make a slice's shape follow the Poisson draw
                xs = torch.cat([xs, xs.new_zeros((fixed - xs.shape[0], xs.shape[1]))])
                ss = None if ss is None else torch.cat([ss, ss.new_ones(fixed - ss.shape[0])])
            # the bare module under Fabric's autocast: its wrapper would refuse the plain autograd call in
            # clipped_backward (it insists on fabric.backward, for fp16 loss scaling, which config refuses here)
            with self._sdpa(), self.fabric.autocast():
                logits = self._gsm(input_ids=xs if ss is None else xs.clamp_min(0)).logits   # (m, T, V)
                loss_i = per_record_nll(logits, xs)                # (m,) each record's own mean loss
                del logits
                if real < xs.shape[0]:   # padding: a zero loss, so a zero gradient, so nothing in the clipped sum
                    loss_i = torch.where(torch.arange(xs.shape[0], device=xs.device) < real, loss_i, 0.0)
                emb_out, self._emb_out[:] = self._emb_out[:], []
                clipped_backward(self._gsm, loss_i, norm_inputs=emb_out if len(emb_out) == 1 else None,
                                 bound_scale=ss)
            total += loss_i[:real].detach().sum()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total / max(records, 1)

    def _dp_empty_step(self, opt) -> None:
        """One DP-SGD step on an empty Poisson batch: the mechanism still runs (clipped sum = 0, plus
        Gaussian noise, divided by the expected batch size) and the accountant records it. Skipping
        it would release "this batch was empty" outside the accountant's view."""
        for p in self.raw_model.parameters():
            if p.requires_grad:
                if self._ghost:   # the fast-clipping optimizer noises .grad, the clipped sum: here zero
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self, data: torch.Tensor) -> float:
        # compiled blocks run eagerly here: no extra graphs for the eval batch shapes / no-grad mode
        stance = (torch.compiler.set_stance("force_eager") if self.compiled == "blocks"
                  and hasattr(torch.compiler, "set_stance") else contextlib.nullcontext())
        with stance, self._sdpa():
            return evaluate_loss(self.model, data, batch_size=self.cfg.eval_batch_size, device=self.fabric.device)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, data: torch.Tensor, *, batch_size: int, device) -> float:
    """Mean next-token cross-entropy (nats/token) over (M, T) sequences."""
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError("evaluation data must be a non-empty (M, T) tensor")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.shape[0], batch_size):
        x = data[i : i + batch_size].to(device)
        loss = model(input_ids=x, labels=x).loss
        n = x.shape[0] * (x.shape[1] - 1)  # predicted tokens in this batch
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / count


class HolderTrainer:
    """One data holder's inner optimisation state: AdamW, step counter, data cursor."""

    def __init__(self, parent: LocalTrainer, holder_id: int, data: torch.Tensor, *, seed: int,
                 total_steps: int, local_steps: int, batch_size: int, dp_secret_seed: int | None = None,
                 units: torch.Tensor | None = None) -> None:
        if data.ndim != 2 or data.dtype != torch.long:
            raise ValueError(f"holder {holder_id}: training data must be a (N, T) LongTensor")
        if data.shape[0] < 1:
            raise ValueError(f"holder {holder_id}: has no training sequences")
        # unit=document (dp.md §10.2): units[r] is row r's document; documents are Poisson-sampled whole and
        # each of a document's k rows is clipped to C/k, so a document moves the clipped sum by at most C
        self.units = self._unit_scale = None
        if units is not None:
            if not parent.cfg.dp_sgd.enabled:
                raise ValueError(f"holder {holder_id}: document units are a DP-SGD setting (train.dp_sgd.unit)")
            units = torch.as_tensor(units, dtype=torch.long)
            if units.shape != (data.shape[0],) or int(units[0]) != 0 or bool((units.diff() < 0).any()) \
                    or bool((units.diff() > 1).any()):
                raise ValueError(f"holder {holder_id}: units must give each row's document, numbered 0, 1, … in row order")
            counts = torch.bincount(units)
            self.units, self._unit_scale = units, (1.0 / counts.double())[units].float()
        self._records = len(counts) if units is not None else data.shape[0]   # what one Poisson draw is over
        if local_steps < 1:
            raise ValueError(f"holder {holder_id}: local_steps (K) must be >= 1")
        self.parent, self.holder_id, self.data = parent, holder_id, data
        self.seed, self.total_steps = seed, max(1, total_steps)
        self.world_size = parent.fabric.world_size
        self.local_steps, self.batch_size = local_steps, min(batch_size, max(1, data.shape[0] // self.world_size))
        # DP-SGD's Poisson rate: public (train.dp_sgd.sample_rate; batch_size is then only the public divisor of
        # the noised sum, never capped by the data) or B/N, which depends on this holder's row count (dp.md §10.3)
        self.dp_rate = None
        if parent.cfg.dp_sgd.enabled:
            if parent.cfg.dp_sgd.sample_rate is not None:
                self.batch_size, self.dp_rate = batch_size, float(parent.cfg.dp_sgd.sample_rate)
                # the expected batch is q·N records, whatever B: logged here only (a local line, never sent), where
                # a q chosen for other data would make every step noise alone, or hold q·N records' gradients at once
                n = self._records
                expect = self.dp_rate * n
                if expect < 1 or expect > 8 * batch_size:
                    log.warning("holder %d: train.dp_sgd.sample_rate %g over its %d records gives %.3g records a step "
                                "in expectation against train.batch_size %d: %s", holder_id, self.dp_rate, n, expect,
                                batch_size, "most steps are noise alone (raise sample_rate)" if expect < 1 else
                                "each step holds that many records' gradients at once (memory; per_sample clipping a "
                                "copy of every parameter's gradient per record; set train.dp_sgd.micro_batch_size with "
                                "clipping ghost, or lower sample_rate)")
            else:
                self.dp_rate = self.batch_size / data.shape[0]
        # train.dp_sgd.hide_batch_size (dp.md §10.4): every step pads its Poisson batch to the same rows, in the
        # same slices, so a step's compute does not reveal how many records were drawn (nor an empty draw)
        # The padded size is a function of public numbers only (the configured batch, the per-document row cap)
        self._dp_pad_rows = None
        if parent.cfg.dp_sgd.enabled and parent.cfg.dp_sgd.hide_batch_size:
            from securefed.privacy.dpsgd import HIDE_TAIL, batch_tail_bound

            dps = parent.cfg.dp_sgd
            cap = dps.padded_batch(batch_size)        # public numbers only (DPSGDConfig refuses what has none)
            self._dp_pad_slice = parent._dp_fixed_slice or dps.micro_batch_size or cap
            self._dp_pad_rows = math.ceil(cap / self._dp_pad_slice) * self._dp_pad_slice
            # only with a public sample_rate can this holder's own q·N exceed the batch the padding was sized for
            own = batch_tail_bound(counts.tolist() if units is not None else [1] * data.shape[0], self.dp_rate, cap)
            if own > HIDE_TAIL:
                # the message names public numbers only (the rate, the pad, the batch): it becomes a PolicyRefused whose
                # text reaches the coordinator (Ray: the reason a holder leaves the run), and the probability
                # would give away q·N, the record count a public sample_rate exists to hide (dp.md §10.3); the
                # holder's own operator gets it in a local log line
                log.warning("holder %d: at sample_rate %g its Poisson batches outgrow the padded batch of %d rows with "
                            "probability up to %.2g a step (%d records)", holder_id, self.dp_rate, cap, own,
                            self._records)
                raise ValueError(f"holder {holder_id}: train.dp_sgd.hide_batch_size: at sample_rate {self.dp_rate:g} "
                                 f"this holder's Poisson batches could outgrow the padded batch of {cap} rows (sized "
                                 f"for train.batch_size {batch_size}) with probability above {HIDE_TAIL:g} a step, and "
                                 "each such step's compute would show it: lower train.dp_sgd.sample_rate or raise "
                                 "train.batch_size (protocols/dp.md §10.4)")
        # what the signed releases may say of EVERY step the accountant holds (dp.md §10.4): the pad, until a
        # checkpoint brings steps that ran unpadded or padded to another size (load_state_dict)
        self._dp_pad_signed = self._dp_pad_rows
        self.step = 0            # inner steps taken so far (drives the LR schedule)
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm_cache = -1, torch.empty(0, dtype=torch.long)
        self.accountant = None   # record-level DP-SGD accountant (Opacus RDP) when train.dp_sgd is on
        # DP-SGD's Poisson batches and Gaussian noise must be unpredictable: seeded from 64 OS-random bits
        # (never from the public run seed, never checkpointed); tests pass dp_secret_seed to replay.
        # torch's generators are not CSPRNGs (Opacus' secure_mode needs torchcsprng): README says so.
        # A replayable seed (tests, deterministic_secrets) is mixed with the step before every step: a holder
        # restarted from its checkpoint must not draw the batches and noise of its first steps again (an audit:
        # reseeded once per process, the restarted holder's noise repeated that of round 1, which cancels out in
        # the difference of two releases). OS-random seeds are fresh in every process and never persisted.
        self._dp_replay_seed = None if dp_secret_seed is None else int(dp_secret_seed)
        if parent.cfg.dp_sgd.enabled:
            secret = int.from_bytes(os.urandom(8), "little") if dp_secret_seed is None else int(dp_secret_seed)
            self._dp_batch_gen = torch.Generator().manual_seed(secret)
            self._dp_noise_gen = torch.Generator(device=parent.fabric.device).manual_seed(secret ^ 0x5DEECE66D)
            # hide_batch_size: which rows the padding reads before zeroing them (nothing of them is used)
            self._dp_pad_gen = torch.Generator().manual_seed(secret ^ 0x9E3779B97F4A7C15)
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self):
        cfg = self.parent.cfg
        # fused AdamW on whole CUDA tensors; over FSDP2's DTensor shards torch's default (foreach) path
        fused = self.parent.fabric.device.type == "cuda" and not self.parent.sharded
        if cfg.dp_sgd.enabled and cfg.dp_sgd.adam_bias_correction:
            from securefed.privacy.dp_adam import AdamWBC, noise_variance

            # DP-AdamBC (dp.md §10.6): the noise's variance out of the second moment (Opacus divides by this batch)
            phi = noise_variance(cfg.dp_sgd.noise_multiplier, cfg.dp_sgd.max_grad_norm, self.batch_size)
            floor = cfg.dp_sgd.adam_bc_floor_ratio * phi if phi > 0 else 1e-16   # σ = 0: (AdamW's eps 1e-8)²
            opt = AdamWBC(self.parent.raw_model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                          weight_decay=cfg.weight_decay, phi=phi, floor=floor)
        else:
            opt = torch.optim.AdamW(self.parent.raw_model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    weight_decay=cfg.weight_decay, fused=fused)
        if cfg.dp_sgd.enabled:
            from securefed.privacy.dpsgd import attach_dp_sgd

            _, opt, accountant = attach_dp_sgd(self.parent._gsm, opt, noise_multiplier=cfg.dp_sgd.noise_multiplier,
                                               max_grad_norm=cfg.dp_sgd.max_grad_norm,
                                               expected_batch_size=self.batch_size,
                                               sample_rate=self.dp_rate,
                                               generator=self._dp_noise_gen)
            if getattr(self, "accountant", None) is not None:  # optimizer reset: the spend carries on
                accountant.load_state_dict(self.accountant.state_dict())
            self.accountant = accountant
        return opt

    @property
    def dp_steps(self) -> int | None:
        """Record-level DP-SGD steps the accountant holds (noise-only steps included); None without DP-SGD."""
        hist = self.dp_history()
        return None if hist is None else sum(n for _, _, n in hist)

    @property
    def dp_public_rate(self) -> float | None:
        """train.dp_sgd.sample_rate when every DP-SGD step the accountant holds ran at that public q (dp.md §10.3),
        a restored checkpoint's steps included; None when q = B/N (a function of this holder's record count) or any
        step ran at another q (a restart that set sample_rate: the earlier steps' q gave the count away)."""
        rate, hist = self.dp_rate if self.parent.cfg.dp_sgd.sample_rate is not None else None, self.dp_history()
        if rate is None or not hist or any(q != rate for _, q, _ in hist):
            return None
        return rate

    @property
    def dp_padded_rows(self) -> int | None:
        """train.dp_sgd.hide_batch_size: the rows every DP-SGD step the accountant holds was padded to (dp.md
        §10.4), restored checkpoint's steps included; None when any of them ran unpadded or padded to another size
        (a restart that turned hide_batch_size on, or changed the batch: those steps' compute showed their draws)."""
        return self._dp_pad_signed

    def dp_epsilon_after(self, steps: int) -> float | None:
        """Record-level ε (at train.dp_sgd.delta) once ``steps`` more DP-SGD steps at this holder's rate have run,
        on top of every step the accountant holds (dp.md §10.5: checked before a round trains); None without
        DP-SGD."""
        hist = self.dp_history()
        if hist is None:
            return None
        from securefed.privacy.holder_ledger import record_level_epsilon   # as its releases sign it and verify reads it

        dps = self.parent.cfg.dp_sgd
        return record_level_epsilon(hist + ([[dps.noise_multiplier, self.dp_rate, int(steps)]] if steps > 0 else []),
                                    dps.delta)

    def dp_history(self) -> list[list[float]] | None:
        """The accountant's (σ, q, steps) history, as recorded in the holder's signed release entries."""
        acc = getattr(self, "accountant", None)
        return None if acc is None else [[float(z), float(q), int(n)] for z, q, n in acc.history]

    def _reseed_dp(self) -> None:
        """Replayable seeds only: this step's batch and noise streams, a pure function of (seed, step)."""
        if self._dp_replay_seed is not None and self.parent.cfg.dp_sgd.enabled:
            mixed = int.from_bytes(hashlib.sha256(f"{self._dp_replay_seed}|{self.step}".encode()).digest()[:8], "little")
            self._dp_batch_gen.manual_seed(mixed)
            self._dp_noise_gen.manual_seed(mixed ^ 0x5DEECE66D)

    def _perm(self) -> torch.Tensor:
        # the epoch's shuffle is a pure function of (seed, holder, epoch): nothing to checkpoint but the cursor
        if self._perm_epoch != self.epoch:
            key = (self.seed * 1_000_003 + self.holder_id * 7_919 + self.epoch) % (2**63 - 1)
            self._perm_cache = torch.randperm(self.data.shape[0], generator=torch.Generator().manual_seed(key))
            self._perm_epoch = self.epoch
        return self._perm_cache

    def _dp_draw(self) -> torch.Tensor:
        """DP-SGD's Poisson draw: a (rows,) mask of the rows this step samples."""
        q = self.dp_rate
        if self.units is not None:
            # unit=document: each document independently with q = B / N rows (expected B rows), all its rows
            docs = torch.rand(self._records, generator=self._dp_batch_gen) < q
            return docs[self.units]
        # Poisson sampling (the accountant's assumption): each row independently with q = B / N
        return torch.rand(self.data.shape[0], generator=self._dp_batch_gen) < q

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rows, each row's clip-bound scale or None)."""
        if self.parent.cfg.dp_sgd.enabled:
            mask = self._dp_draw()
            return self.data[mask], None if self.units is None else self._unit_scale[mask]
        # A holder with several GPUs (train.devices > 1): every rank walks the same permutation and takes
        # its own slice of world·batch rows, so ranks see different data (batch_size is per device).
        world, rank = self.world_size, self.parent.fabric.global_rank
        need = self.batch_size * world
        if self.cursor + need > self.data.shape[0]:
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self._perm()[self.cursor : self.cursor + need]
        self.cursor += need
        return self.data[idx[rank * self.batch_size : (rank + 1) * self.batch_size]], None

    def _next_padded_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """hide_batch_size (dp.md §10.4): (the padded batch: the drawn rows then zero rows, the rows' clip-bound
        scales (padding: 1) or None, the drawn rows). Gathered at the padded size in one piece: every step reads P
        rows of the holder's data (the padding's from rows picked at random, then zeroed), so even the host's gather
        and copies do not grow with the draw — a gather of the drawn rows alone took ≈ 1.4 µs a row of 1,024
        tokens on a CPU, 0.7 ms for an empty draw and 3.6 ms for 2,355 rows. A batch above the pad (probability
        <= 10⁻¹⁵ a step) is padded to the next whole slice: its compute shows, which §10.4 counts against the
        timing channel's δ."""
        mask = self._dp_draw()
        real, pad = int(mask.sum()), self._dp_pad_rows   # a pass over every row whatever the draw
        if real > pad:
            size = self._dp_pad_slice
            log.warning("holder %d: a Poisson batch outgrew train.dp_sgd.hide_batch_size's padded batch (a "
                        "probability <= 1e-15 event, dp.md §10.4): this step's compute shows its size", self.holder_id)
            pad = math.ceil(real / size) * size
        # the padding's rows: random rows (a generator of their own, never the Poisson draw's), so reading them costs
        # what reading drawn rows does (a repeated row would stay in cache); then zeroed, the padding's content
        rows = torch.randint(0, self.data.shape[0], (pad,), generator=self._dp_pad_gen)
        # the drawn rows' indices, in row order, into rows[:real] — as one write per row of the holder's data whatever
        # the draw (an undrawn row writes to a slot past the pad, then dropped), not a write per drawn row (nonzero()
        # and a copy of its output grew with the draw: the host work dp.md §10.4 rule 4 had left outside the timing δ)
        n = self.data.shape[0]
        dest = torch.where(mask, torch.cumsum(mask, 0) - 1, pad)
        rows = torch.cat([rows, rows.new_zeros(1)]).scatter_(0, dest, torch.arange(n))[:pad]
        drawn = torch.arange(pad) < real
        x = torch.where(drawn[:, None], self.data[rows], 0)
        scale = None if self.units is None else torch.where(drawn, self._unit_scale[rows], 1.0)
        return x, scale, real

    def train_round(self, global_flat: torch.Tensor, *, delta_on_device: bool = False) -> LocalUpdate:
        """K inner steps from θ_global; returns Δ = θ_global − θ_local (flat, float32, on the host; with
        ``delta_on_device`` left where it was formed, for privacy.device_encode to clip and round there).
        ``global_flat`` is only read, never written: an in-process holder passes the coordinator's immutable θ_r
        bytes, shared by every holder of the round, without copying them (federation/holder.py ``_on_model``)."""
        parent, cfg = self.parent, self.parent.cfg
        device = parent.fabric.device
        cuda = device.type == "cuda"
        rank = parent.fabric.global_rank
        if parent.sharded:   # θ stays on the host; each rank copies in its own shard only
            theta = global_flat.to(dtype=torch.float32)
            load_flat_sharded(parent.raw_model, theta, rank=rank, world=self.world_size)
        else:
            # one host->device copy of θ_global; it stays on the device to form Δ there (one copy back)
            theta = global_flat.to(device=device, dtype=torch.float32, copy=True)  # never alias the caller's
            set_flat(parent.raw_model, theta)
        if cfg.reset_optimizer:
            self.optimizer = self._make_optimizer()
        opt = self.optimizer
        parent.model.train()
        losses = torch.zeros((), device=device)
        for _ in range(self.local_steps):
            lr = lr_at(cfg, self.step, self.total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            self._reseed_dp()
            if self._dp_pad_rows is not None:   # hide_batch_size: the same padded batch every step, empty or not
                x, scale, real = self._next_padded_batch()
                self.step += 1
                x = (x.pin_memory() if cuda else x).to(device, non_blocking=True)
                losses += parent._ghost_step(opt, x, None if scale is None else scale.to(device), real=real)
                continue
            x, scale = self._next_batch()
            self.step += 1
            if x.shape[0] == 0:  # an empty Poisson batch (DP-SGD): a noise-only step, accounted
                parent._dp_empty_step(opt)
                continue
            # pinned staging: the copy is truly asynchronous, the CPU runs ahead of the GPU
            x = (x.pin_memory() if cuda else x).to(device, non_blocking=True)
            losses += parent._step_fn(opt, x) if scale is None else parent._step_fn(opt, x, scale.to(device))
        tokens = self.local_steps * self.batch_size * self.world_size * self.data.shape[1]
        if parent.sharded:   # Δ piece by piece (one piece on the device at a time); mean loss over ranks
            shard = ShardedDelta.from_model(parent.raw_model, theta, rank=rank, world=self.world_size)
            mean_loss = float(parent.fabric.all_reduce(losses, reduce_op="mean")) / self.local_steps
            return LocalUpdate(self.holder_id, None, tokens, self.local_steps, mean_loss, None, shard)
        with torch.no_grad():
            params = [p.detach() for p in parent.raw_model.parameters()]
            views = [v.view_as(p) for v, p in zip(theta.split(parent._layout), params)]
            if all(p.dtype == torch.float32 for p in params):
                torch._foreach_sub_(views, params)                  # θ_global − θ_local, in place, on the device
            else:
                for v, p in zip(views, params):
                    v.sub_(p.to(torch.float32))
            if delta_on_device:
                delta = theta                                       # a buffer of its own: the next round allocates anew
            elif cuda:  # Δ copied out once, into pinned memory (cached by torch's host allocator)
                delta = torch.empty(theta.numel(), dtype=torch.float32, pin_memory=True)
                delta.copy_(theta, non_blocking=True)
                torch.cuda.current_stream(device).synchronize()
            else:
                delta = theta.to("cpu")                             # (P,) float32: θ_global − θ_local
        eps = None
        if cfg.dp_sgd.enabled:
            from securefed.privacy.holder_ledger import record_level_epsilon

            # the accountant's own value (ε ≥ 0), computed as the release will sign it: computed once for both
            eps = record_level_epsilon(self.dp_history(), cfg.dp_sgd.delta)
        return LocalUpdate(self.holder_id, delta, tokens, self.local_steps, float(losses) / self.local_steps, eps)

    def state_dict(self) -> dict:
        state = {"holder_id": self.holder_id, "step": self.step, "epoch": self.epoch, "cursor": self.cursor,
                 "optimizer": self.optimizer.state_dict()}
        if getattr(self, "accountant", None) is not None:
            state["dp_sgd_accountant"] = self.accountant.state_dict()
            # what one record was in these steps (dp.md §10.2): a restart must not go on under another unit, even
            # for steps no release has signed yet (they are in the accountant and in AdamW's state)
            state["dp_sgd_unit"] = self.parent.cfg.dp_sgd.unit
            # the rows every one of these steps was padded to (None: not all were; dp.md §10.4): a restart must not
            # sign "padded" over steps whose compute showed their Poisson batch, though no release has signed them yet
            state["dp_sgd_padded_rows"] = self.dp_padded_rows
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("holder_id") != self.holder_id:
            raise ValueError(f"checkpoint state is for holder {state.get('holder_id')}, not {self.holder_id}")
        self.step, self.epoch, self.cursor = int(state["step"]), int(state["epoch"]), int(state["cursor"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "dp_sgd_accountant" in state:
            unit, mine = state.get("dp_sgd_unit"), self.parent.cfg.dp_sgd.unit
            if unit is not None and unit != mine and (state["dp_sgd_accountant"].get("history") or []):
                raise ValueError(f"checkpoint's record-level DP-SGD steps were taken per {unit}, but train.dp_sgd.unit "
                                 f"is {mine}: no single ε would hold")
            self.accountant.load_state_dict(state["dp_sgd_accountant"])
            # a checkpoint written before hide_batch_size existed has no dp_sgd_padded_rows: its steps ran unpadded
            # (the accountant is replaced whole, so is what may be signed of its steps)
            self._dp_pad_signed = self._dp_pad_rows
            if self.accountant.history and state.get("dp_sgd_padded_rows") != self._dp_pad_rows:
                if self._dp_pad_rows is not None:
                    log.warning("holder %d: the checkpoint's %d record-level DP-SGD steps were not all padded to %d rows "
                                "(train.dp_sgd.hide_batch_size, dp.md §10.4): this holder's releases will not say its "
                                "batch sizes were hidden", self.holder_id, self.dp_steps, self._dp_pad_rows)
                self._dp_pad_signed = None
