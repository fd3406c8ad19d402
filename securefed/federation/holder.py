"""The Holder role, written once for every channel (protocols/federation.md §4–§5).

One data holder: its own data, floors and ε budget (``HolderConfig``), its Lightning trainer, the one
update encoder, its secure-aggregation and CKKS state machines, and its release records. A channel
delivers one message per stage through :meth:`Holder.handle` and carries the reply back; the holder
checks everything it is sent (rules H1–H9 below) and answers a message it does not like with a
logged refusal or silence — never a traceback, never a second release.

    H1  a Welcome must fit this holder's floors (aggregation mode, ring, threshold, graph, privacy
        mode, σ, and under ckks+secagg its CKKS floor: survivors, verified sums, flooding, routed
        tensors, key scope and lifetime; never with distributed DP), its own tokenizer, and a batch its
        rows fill (a cut batch shows its row count); else it leaves the run (PolicyRefused, exit 7).
    H2  an Offer is for a round it has not yet taken part in, names it, and carries a privacy plan of
        the welcomed mode, ring and δ, at or above its floors, for a cohort of at least its minimum; a
        central plan is made for a population equal to its roster's size (dp.md §2.1).
    H3  it joins only if its own projected ε (the plan it will encode with, t_min survivors) stays
        within its cap; else it refuses with the reason, recorded in its own ledger.
    H4  θ_r must hash to the Offer's θ hash.
    H5  the final Plan keeps the Offer's mode, C, σ, δ, ring and dimension, lists this holder among
        participants drawn from the offered cohort, and still passes H2's floors and H3.
    H6  a RoundStart / CKKS request names the round, a cohort drawn from the plan's participants,
        this holder, the planned ring, and thresholds and a graph at or above its floors. Under
        `secagg` the RoundStart comes before the model (federation.md §4.3): it is checked against the
        Offer then, and against the Plan at PLAN (a cohort outside the plan: the holder refuses there).
    H7  release once: before the first message carrying (a function of) its data in round r —
        CKKS ciphertexts, the plain update or the masked input — the release is charged durably in
        its ledger; a released round is never taken part in again (a restart resumes at the next
        round), and each release stage is answered at most once per round.
    H8  it settles the charge at the signed survivor count before sending unmasking shares.
    H9  the CKKS decryptor releases at most one sum per (key generation, round), of the current round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from securefed import jsonio
from securefed.ckks.holder import HolderRole, expected_leader
from securefed.ckks.keyshare import HolderPublic, HolderSecrets, KeyShareError
from securefed.ckks.messages import AggregateMsg, KeyAdvertMsg, KeyShareMsg
from securefed.ckks.messages import decode as ckks_decode
from securefed.ckks.messages import encode as ckks_encode
from securefed.federation.holder_config import PRIVACY_ORDER, HolderConfig
from securefed.federation.messages import (CkksAdverts, CkksKeys, CkksRotate, CkksShare, CkksUploadRequest, Decision,
                                           MessageError, Offer, Plan, Ready, Welcome, decode_as, encode)
from securefed.federation.stages import SECAGG_STAGES, Stage, holder_stages, secagg_stages
from securefed.primitives.keys import IdentityKey
from securefed.primitives.quantize import quantize_draws
from securefed.primitives.rng import PrefetchedEntropy
from securefed.privacy.accountant import epsilon_text
from securefed.privacy.clipping import clippable_in_place, l2_clip
from securefed.privacy.config import DEFAULT_DELTA
from securefed.privacy.encoders import DiscretePlan
from securefed.privacy.holder_ledger import history_extends
from securefed.privacy.remote import HolderBudget, RoundSpec, spec_encode, spec_plan
from securefed.runtime.parties import EntropyFactory
from securefed.runtime.rundir import atomic_write_text
from securefed.secagg import IdentityInUse, Roster, SecAggAborted, SecAggClient, SecAggConfig, UnexpectedMessage
from securefed.secagg import decode as secagg_decode
from securefed.secagg.messages import RoundStart, UnmaskRequest

__all__ = ["Holder", "PolicyRefused", "session_context", "model_sha256", "announce_model", "withdraw_model"]

log = logging.getLogger("securefed.holder")


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:      # a forked child has none of the parent's threads (as primitives/spans.py)
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


class PolicyRefused(RuntimeError):
    """The run asks for less than this holder's floors allow: it leaves (exit 7, protocols/transport.md §10)."""


class HolderStateError(RuntimeError):
    """This holder's own state directory is unreadable or inconsistent (a ledger cut back or deleted, a lost
    checkpoint, another run's files): it refuses to start rather than lose privacy spend (exit 4,
    protocols/federation.md §6). The message names the file and what to do."""


STATE_VERSION = 2


def _all_finite(delta) -> bool:
    """Whether a trained update (numpy on the host, or a torch tensor where it was trained) is finite everywhere."""
    if isinstance(delta, np.ndarray):
        return bool(np.isfinite(delta).all())
    import torch

    return bool(torch.isfinite(delta).all())


def session_context(run_id: bytes, model_hash: bytes) -> bytes:
    """The secure-aggregation session context: run id and θ_r's hash (protocols/secagg.md §5, C1)."""
    return b"securefed/federation/v1|" + run_id + model_hash


# θ_r as this process's coordinator hashed it for the Offer (announce_model), with that hash: the in-process channel
# hands every holder this very object, whose bytes cannot change, so H4's check of it need not hash 4·P bytes again
_announced: tuple[bytes, str] | None = None


def model_sha256(theta_bytes: bytes | bytearray) -> str:
    """SHA-256 (hex) of θ's float32 little-endian bytes: the Offer's θ hash, which a holder checks the θ it receives
    against (H4, protocols/federation.md §4.2). The very ``bytes`` object this process's coordinator announced is
    answered with the hash taken of it then; any other object — another process's copy, a writable buffer, equal
    bytes in a new object — is hashed."""
    a = _announced
    if a is not None and theta_bytes is a[0]:
        return a[1]
    return hashlib.sha256(theta_bytes).hexdigest()


def announce_model(theta: np.ndarray) -> tuple[bytes, str]:
    """θ_r's bytes for the holders and their hash for the Offer (federation.md §4.1), from the coordinator's float32
    little-endian θ: copied into one immutable ``bytes`` object while a second thread hashes the same memory
    (hashlib lets go of the GIL; nothing writes θ meanwhile, so both read the same bytes). The object is remembered
    with its hash until :func:`withdraw_model` or the next announcement; :func:`model_sha256` answers for it."""
    global _announced
    words = np.ascontiguousarray(theta)
    if words.dtype != np.dtype("<f4") or words.ndim != 1:
        raise TypeError("θ is announced as a flat float32 little-endian vector")
    with ThreadPoolExecutor(1, thread_name_prefix="securefed-theta-hash") as pool:
        digest = pool.submit(lambda: hashlib.sha256(memoryview(words).cast("B")).hexdigest())
        theta_bytes = words.tobytes()
        _announced = (theta_bytes, digest.result())
    return _announced


def withdraw_model() -> None:
    """Forget the announced θ (its holders have it): the memo no longer keeps 4·P bytes alive."""
    global _announced
    _announced = None


@dataclass
class _Round:
    """What this holder holds of the round in progress (memory only: a restart never resumes a round)."""

    offer: Offer
    spec: RoundSpec | None = None
    delta: "np.ndarray | torch.Tensor | None" = None   # (P,) float32 Δ = θ_r − θ_local (a tensor: kept on the device, §6.6)
    report: Ready | None = None
    masked_part: np.ndarray | None = None     # the ring vector for secure aggregation
    ckks_part: np.ndarray | None = None       # the CKKS-routed slice (float64), ckks+secagg only
    plain: np.ndarray | None = None           # the clipped update, plain only
    secagg: SecAggClient | None = None
    secagg_cohort: tuple[int, ...] = ()       # the RoundStart's cohort
    encode_entropy: PrefetchedEntropy | None = None   # rounding bits drawn while training (secagg.md §6.5)
    ckks_cohort: frozenset[int] = frozenset()
    answered: set[int] = field(default_factory=set)   # release stages already answered (H7)
    refused: bool = False                     # refused (or left) this round: final, no later plan or release
    trained: bool = False
    saved: bool = False                       # the trainer's state after this round's training is on disk (H7)


class Holder:
    def __init__(self, cfg: HolderConfig, *, identity: IdentityKey, roster: Roster, progress: bool = False) -> None:
        self.cfg, self.id, self.identity, self.roster = cfg, cfg.holder_id, identity, roster
        if roster.keys.get(self.id) != identity.public_bytes:
            raise ValueError(f"holder {self.id}: identity key does not match its roster entry")
        self.state_dir = Path(cfg.state_dir).expanduser()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.state_dir.stat().st_mode & 0o077:   # made beforehand, wider: its ledger and optimizer state are the holder's
            try:
                self.state_dir.chmod(0o700)
                log.warning("holder %d: state directory %s was readable by others; made 0700 (threat SYS-30)",
                            self.id, self.state_dir)
            except OSError as e:   # fail closed: its optimizer state is a function of its data's gradients
                raise HolderStateError(f"holder {self.id}: state directory {self.state_dir} is readable by others and "
                                       f"could not be made 0700 ({e.strerror or e}); use a directory this account owns "
                                       "(threat SYS-30)") from None
        self.entropy = EntropyFactory(seed=cfg.secret_seed, deterministic=cfg.deterministic_secrets)
        self.progress = progress
        self.welcomed: Welcome | None = None
        self.next_round = 1                    # rounds below this one were taken part in (or skipped)
        self._trainer_anchor: dict | None = None   # what the last trainer.pt holds (the state file records it)
        self.budget: HolderBudget | None = None
        self.trainer = None
        self._round: _Round | None = None
        self.ckks: HolderRole | None = None
        self._ckks_roster = {h: HolderPublic(h, k) for h, k in roster.keys.items()}
        self._data = None
        self._pool: ThreadPoolExecutor | None = None

    def _mask_pool(self) -> ThreadPoolExecutor:
        """The threads that expand this holder's masks while it trains and round its update (secagg.md
        §6.5). One pool per size in a process: holders simulated in one process share it (their tasks
        queue in order), so the cores are not oversubscribed n_holders times."""
        if self._pool is None:
            n = self.cfg.hardware.mask_threads or max(1, (os.cpu_count() or 2) // 2)
            with _POOLS_LOCK:
                if n not in _POOLS:
                    _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"securefed-masks-{n}")
                self._pool = _POOLS[n]
        return self._pool

    # ------------------------------------------------------------------ joining (H1)
    def hello(self) -> dict:
        return {"holder_id": self.id}

    def welcome(self, data: bytes) -> None:
        """Check the run against this holder's floors; set up data, trainer and budget. PolicyRefused if
        the run is below a floor or its Welcome does not decode (a setting no config allows, such as CKKS
        min_survivors 1, fails in decoding: retrying cannot change it); MessageError if it is another holder's."""
        try:
            w = decode_as(data, Welcome)
        except MessageError as e:   # H1: refused (exit 7), not retried as a connection problem (exit 6)
            raise PolicyRefused(f"the coordinator's Welcome is not one this holder can accept: {e}") from None
        if w.holder_id != self.id:
            raise MessageError(f"welcome is addressed to holder {w.holder_id}, not {self.id}")
        if self.welcomed is not None:
            if w.run_id != self.welcomed.run_id:
                raise PolicyRefused("the coordinator now runs a different run id")
            # what moves as the run goes on (the next round; how many released sums hold this holder, PV-35) is
            # no setting: a coordinator resumed after round 2 sends 2 where this holder joined at 0
            moving = dict(next_round=self.welcomed.next_round, included_rounds=self.welcomed.included_rounds,
                          last_included_round=self.welcomed.last_included_round)
            if replace(w, **moving) != self.welcomed:
                # a reconnect must not smuggle in settings the floors were never checked against (H1)
                raise PolicyRefused("the coordinator changed the run's settings since this holder joined")
            self.welcomed = w
            return
        pol = self.cfg.policy
        if w.aggregation not in pol.aggregation:
            raise PolicyRefused(f"aggregation {w.aggregation!r} is not one this holder accepts {list(pol.aggregation)}")
        if PRIVACY_ORDER[w.privacy_mode] < PRIVACY_ORDER[pol.privacy_mode]:
            raise PolicyRefused(f"privacy mode {w.privacy_mode!r} is below this holder's floor {pol.privacy_mode!r}")
        if w.aggregation != "plain":
            floor = pol.secagg_floor()
            if w.secagg.ring_bits < floor.ring_bits:
                raise PolicyRefused(f"ring of {w.secagg.ring_bits} bits is below this holder's floor of {floor.ring_bits}")
            if w.secagg.threshold_fraction < floor.threshold_fraction:
                raise PolicyRefused(f"threshold fraction {w.secagg.threshold_fraction} is below this holder's floor "
                                    f"{floor.threshold_fraction}")
        if w.aggregation == "ckks+secagg" and w.privacy_mode == "distributed":
            # H1: the CKKS part carries no noise share (ckks.md §9; runtime/config.py refuses the pair too)
            raise PolicyRefused("distributed DP with aggregation ckks+secagg: the CKKS part would carry no noise share")
        if pol.init_sha256 is not None and w.init_sha256 != pol.init_sha256:   # H1, dp.md §13.4
            raise PolicyRefused(f"the run starts from initial weights with SHA-256 {w.init_sha256[:16]}…, not the "
                                f"{pol.init_sha256[:16]}… this holder's policy.init_sha256 requires")
        if pol.init_sha256 is not None and w.next_round > 1 and self._read_state_file() is None:
            # only round 1's model can be held to θ0's hash (H2); a holder joining later would train a θ it cannot
            # tie to the initial model it requires: fail closed (dp.md §13.4)
            raise PolicyRefused(f"the run is at round {w.next_round}: this holder would join after round 1, so it "
                                "cannot check that the model it is sent descends from the initial model its "
                                "policy.init_sha256 requires; join a run from its first round, or set "
                                "policy.init_sha256 to null")
        data = self.prepare_data()
        if data.tokenizer_sha256 != w.tokenizer_sha256:   # what to change, not only that the hashes differ
            if len(data.tokenizer) != w.vocab_size:
                raise PolicyRefused(f"the run's tokenizer has {w.vocab_size} tokens and this holder's {len(data.tokenizer)}: "
                                    f"set this holder's data.vocab_size to {w.vocab_size} (a trained tokenizer) or give it "
                                    "the run's tokenizer file (data.tokenizer)")
            raise PolicyRefused("the run's tokenizer differs from this holder's (tokenizer hash mismatch; both have "
                                f"{w.vocab_size} tokens): give this holder the run's tokenizer file (data.tokenizer), or "
                                "train both from the same Python's standard library")
        from securefed.runtime.rundir import RunDir

        RunDir(self.state_dir).write_json(self.state_dir / "data_manifest.json", data.manifest)   # its own record
        self.welcomed = w
        try:
            self._hold_state_dir()
            self._build_trainer(w, data)
            self._check_record_level_cap(w)
            if w.aggregation == "ckks+secagg":
                from securefed.ckks.routing import plan_routes

                self._route_plan = plan_routes(self._layout, w.ckks)
                # H1: the CKKS settings at or above this holder's own floor (federation.md §4.2, ckks.md §2–§5)
                why = pol.ckks.refusal(w.ckks, [(e.name, e.numel) for e in self._route_plan.entries if e.route == "ckks"])
                if why:
                    raise PolicyRefused(why)
            self.budget = self._open_budget(w.run_id.hex())
            self._load_state()
            if w.aggregation == "ckks+secagg":
                self.ckks = HolderRole(HolderSecrets(self.id, self.identity), w.ckks)
        except BaseException:   # H1: a refused welcome leaves a holder that answers nothing, not a half-joined one
            self.welcomed, self.budget, self.trainer, self.ckks, self.next_round = None, None, None, None, 1
            self._trainer_anchor = None
            raise
        log.info("holder %d joined run %s (next round %d)", self.id, w.run_id.hex(), self.next_round)
        dp = self.cfg.dp_sgd
        if dp.enabled:   # dp.md §10.5: what the run's plan would spend, and who decides it
            planned = self.trainer.dp_epsilon_after(w.local_steps * max(0, w.rounds - self.next_round + 1))
            if dp.epsilon_cap is None:
                log.warning("holder %d: no dp_sgd.epsilon_cap: the coordinator's batch size, local steps and rounds "
                            "decide this holder's record-level epsilon (%s at delta %.3g if it joins every round "
                            "left); set dp_sgd.epsilon_cap to bound it (protocols/dp.md §10.5)", self.id,
                            epsilon_text(planned), dp.delta)
            elif planned > dp.epsilon_cap:
                log.warning("holder %d: joining every round left would take its record-level epsilon to %s, above "
                            "its dp_sgd.epsilon_cap %g: it will refuse rounds once the next would pass the cap",
                            self.id, epsilon_text(planned), dp.epsilon_cap)

    def _check_record_level_cap(self, w: Welcome) -> None:
        """dp.md §10.5: a dp_sgd.epsilon_cap below one round's record-level cost (the Welcome's local steps at this
        holder's own rate, from an empty accountant: the trainer is fresh here) would refuse every round. Said now, as
        the pre-flight says it in a simulation: a refusal (H1, exit 7), not a client that joins, refuses each round and
        ends with "all rounds done" having taken part in none."""
        dp, one = self.cfg.dp_sgd, self._over_record_cap()
        if one is not None:
            raise PolicyRefused(f"its dp_sgd.epsilon_cap {dp.epsilon_cap:g} is below the record-level cost of one round "
                                f"of this run ({epsilon_text(one)} at delta {dp.delta:.3g}: the run's {w.local_steps} local steps "
                                f"at batch {w.batch_size}), so it would refuse every round (protocols/dp.md §10.5); "
                                f"raise dp_sgd.epsilon_cap above {epsilon_text(one)}, or ask the coordinator for fewer local steps "
                                "or a smaller batch")

    def prepare_data(self):
        from securefed.federation.data import holder_rows

        if self._data is None:
            t0 = time.perf_counter()
            log.info("holder %d: preparing its data (reading and tokenizing its own sources)", self.id)
            self._data = holder_rows(self.cfg, progress=self.progress)
            dp, rows, records = self.cfg.dp_sgd, int(self._data.train.shape[0]), self._data.records
            kind = "groups of documents (data.unit_field)" if dp.unit == "group" else "documents"
            what = (f"{records} {kind} in {rows} rows of their own" if self._data.units is not None
                    else f"{rows} training records")
            log.info("holder %d: data ready: %s in %.1f s", self.id, what, time.perf_counter() - t0)
            if dp.enabled and dp.unit != "group" and self.cfg.data.unit_field is not None:
                # the ids are read (and checked) but one record is not all of one id's documents (dp.md §10.2)
                log.warning("holder %d: data.unit_field %r is set but dp_sgd.unit is %s: one record is one %s, so a "
                            "person with several documents is protected only by group privacy over them; set "
                            "dp_sgd.unit=group to protect each %r value's documents together", self.id,
                            self.cfg.data.unit_field, dp.unit, "document" if dp.unit == "document" else "training row",
                            self.cfg.data.unit_field)
            if dp.enabled and dp.delta > 1.0 / records:   # record-level δ against this holder's own record count
                unit = ("groups" if dp.unit == "group" else "documents") if self._data.units is not None else "records"
                raise ValueError(f"holder {self.id}: dp_sgd.delta {dp.delta:.3g} is above 1/{unit} = 1/{records}: "
                                 "no meaningful record-level guarantee; lower it")
        return self._data

    def _build_trainer(self, w: Welcome, data) -> None:
        from securefed.federation.data import shared_trainer
        from securefed.training.flat import get_flat, param_layout

        hw = self.cfg.hardware
        try:
            tcfg = replace(w.train, accelerator=hw.accelerator, devices=hw.devices, precision=hw.precision,
                           strategy=hw.strategy, compile=hw.compile, dp_sgd=self.cfg.dp_sgd)
            trainer = shared_trainer(w.model_preset, w.vocab_size, w.seq_len, w.seed, tcfg)
        except ValueError as e:
            # H1: a recipe this holder's own dp_sgd or hardware cannot run with, or a model it does not know, is a
            # refusal (exit 7), not a ValueError that `securefed client` would retry as a connection problem
            raise PolicyRefused(f"the run's model or training settings do not fit this holder's own config: {e}") from None
        if len(data.tokenizer) != w.vocab_size:
            raise PolicyRefused(f"the run's vocabulary ({w.vocab_size}) differs from this holder's tokenizer")
        theta0 = get_flat(trainer.raw_model)
        if theta0.numel() != w.dim:
            raise PolicyRefused(f"the run's model has {w.dim} parameters; preset {w.model_preset!r} has {theta0.numel()}")
        self._layout = param_layout(trainer.raw_model)
        dp_seed = None
        if self.cfg.deterministic_secrets:
            dp_seed = int.from_bytes(hashlib.sha256(f"dp-sgd|{self.cfg.secret_seed}|{self.id}".encode()).digest()[:8], "little")
        try:
            self.trainer = trainer.new_holder(self.id, data.train, seed=self.cfg.data_seed, total_steps=w.total_steps,
                                              local_steps=w.local_steps, batch_size=w.batch_size,
                                              dp_secret_seed=dp_seed, units=data.units)
        except ValueError as e:   # the run's settings against this holder's own data and dp_sgd (e.g. dp.md §10.4)
            raise PolicyRefused(str(e)) from None
        if self.trainer.batch_size != w.batch_size:
            # H1 (federation.md §4.2): a batch cut to the rows it holds would put its row count in every Ready's
            # tokens (K·min(B, N)·T: an audit's coordinator sent B = 2^40 and read N = 378) and in each step's time
            raise PolicyRefused(f"the run's batch_size {w.batch_size} is more rows than this holder trains on per step; "
                                "a smaller batch would show the coordinator how many rows it holds. Give this holder "
                                "more data, or ask the coordinator for a smaller train.batch_size (federation.md H1)")

    # ------------------------------------------------------------------ state (own files only)
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "holder_state.json"

    @property
    def _trainer_file(self) -> Path:
        return self.state_dir / "trainer.pt"

    def _open_budget(self, run: str | None) -> HolderBudget:
        """This holder's own ledger (HolderStateError if unreadable or of another holder / run); every append
        is anchored in the state file before and after (§6)."""
        from securefed.privacy.ledger import LedgerError

        path = self.state_dir / "ledger.jsonl"
        pol = self.cfg.policy
        try:
            budget = HolderBudget(path, holder_id=self.id, cap=pol.epsilon_cap, delta=pol.delta, run_id=run or "",
                                  signer=self.identity, anchor=self._write_state_file if run else None,
                                  population=len(self.roster.keys))
        except (LedgerError, ValueError) as e:
            where = "" if str(path) in str(e) else f"{path}: "
            raise HolderStateError(f"{where}{e}. This holder's privacy ledger cannot be read; restore it from a "
                                   "backup (a torn last line after a crash: remove that line only)") from None
        other = sorted({str(e.get("run_id")) for e in budget.ledger.entries} - ({run} if run else set()))
        if run and other:
            raise HolderStateError(f"{path} holds entries of another run ({other[0][:16]}…): this state_dir belongs "
                                   f"to that run; give run {run[:16]}… a new state_dir")
        return budget

    def _read_state_file(self) -> dict | None:
        """holder_state.json, or None if absent; HolderStateError naming the file if it is not a state file."""
        p = self._state_file
        if not p.exists():
            return None
        try:
            st = jsonio.loads(p.read_text(encoding="utf-8"), legacy=True)   # (written by json.dumps below)
        except (OSError, ValueError) as e:   # UnicodeDecodeError, JSONDecodeError, nested too deeply, a duplicate key
            raise HolderStateError(f"{p} cannot be read ({type(e).__name__}: {e}); restore it from a backup") from None
        ok = isinstance(st, dict) and st.get("version") in (1, STATE_VERSION) and isinstance(st.get("run_id"), str) \
            and isinstance(st.get("next_round"), int) and not isinstance(st.get("next_round"), bool)
        if ok and st["version"] == STATE_VERSION:
            n, tr = st.get("ledger_entries"), st.get("trainer")
            ok = isinstance(n, int) and not isinstance(n, bool) and n >= 0 and isinstance(st.get("ledger_head"), str) \
                and (tr is None or (isinstance(tr, dict) and all(isinstance(tr.get(k), (int, type(None)))
                                                                 for k in ("step", "dp_sgd_steps"))))
        if not ok:
            raise HolderStateError(f"{p} is not a holder state file of version 1 or {STATE_VERSION}; restore it")
        return st

    def _read_trainer_file(self, *, mmap: bool = False) -> dict | None:
        p = self._trainer_file
        if not p.exists():
            return None
        import torch

        try:   # weights_only: never runs code (audit SEC-12)
            st = torch.load(p, weights_only=True, mmap=mmap, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: one error naming it
            raise HolderStateError(f"{p} cannot be read ({type(e).__name__}); restore it from a backup") from None
        if not isinstance(st, dict):
            raise HolderStateError(f"{p} is not a holder trainer checkpoint; restore it")
        return st

    def _hold_state_dir(self) -> None:
        """One process per state directory (federation.md §6): a second one is refused, never interleaved."""
        from securefed.runtime.rundir import DirectoryInUse, hold_exclusive

        try:
            hold_exclusive(self.state_dir, f"holder {self.id}'s state directory")
        except DirectoryInUse as e:
            raise HolderStateError(str(e)) from None

    def check_state(self) -> None:
        """Before joining (`securefed client`): this holder's state files can be read — one clear error
        (HolderStateError) now, not a retried connection problem later. The run's own checks follow at the
        welcome, when the run id is known (:meth:`_load_state`)."""
        self._hold_state_dir()
        st = self._read_state_file()
        budget = self._open_budget(None)
        tr = self._read_trainer_file(mmap=True)
        # the anchors need no run id: a ledger cut back or deleted, or a checkpoint lost or older than the state file
        # records, is refused here, before the Join (federation.md §6), not after it — nor retried as a connection
        # problem (exit 6) while the coordinator is down, which is when a crashed federation is restarted
        self._check_anchors(st, budget.ledger, tr)

    def _load_state(self) -> None:
        """Resume this holder's own state, refusing (HolderStateError) anything that would lose or repeat spend
        (federation.md §6): the ledger must extend the state file's anchor; a checkpoint must hold at least the
        steps the state file and the signed releases record; no file may be missing that the others imply."""
        run = self.welcomed.run_id.hex()
        st, entries = self._read_state_file(), self.budget.ledger.entries
        led = self.budget.ledger.path
        tr = self._read_trainer_file()
        if st is not None and st["run_id"] != run:
            raise HolderStateError(f"holder state in {self.state_dir} belongs to another run; use a new state_dir")
        self._check_anchors(st, self.budget.ledger, tr)
        if st is not None:
            self.next_round = int(st["next_round"])
            if st["version"] == STATE_VERSION:
                self._trainer_anchor = st.get("trainer")
            else:
                log.warning("holder %d: %s is of version 1 (no ledger anchor): it is rewritten as version %d",
                            self.id, self._state_file, STATE_VERSION)
        # record-level DP-SGD: the checkpoint must hold at least the steps the signed releases say were spent, and the
        # same history (an audit edited σ in trainer.pt between runs: the holder then re-priced its spent steps)
        signed = [e["record_level"] for e in entries if isinstance(e.get("record_level"), dict)]
        if getattr(self.trainer, "dp_steps", None) is None and (signed or (tr or {}).get("dp_sgd_accountant") is not None):
            raise HolderStateError(f"{led if signed else self._trainer_file} records record-level DP-SGD spend but this "
                                   "holder's config has dp_sgd off: its accountant would be dropped; restore the config")
        if self.cfg.dp_sgd.enabled:
            # the unit every spent step was priced in — the signed releases', and the checkpoint's, whose steps no
            # release may have signed yet (killed after the checkpoint, before the release; or a round that ended
            # unreleased) — must be the configured one: no single ε holds across two units. A checkpoint written
            # before it recorded its unit: the signed releases' unit, else sequence (as the ledger reads it)
            from securefed.privacy.holder_ledger import record_unit

            spent = [(led, record_unit(signed[-1]))] if signed else []
            if tr is not None and self._checkpoint_history(tr):
                spent.append((self._trainer_file, tr.get("dp_sgd_unit") or (record_unit(signed[-1]) if signed
                                                                             else "sequence")))
            for where, unit in spent:
                if unit != self.cfg.dp_sgd.unit:
                    raise HolderStateError(f"{where}'s record-level DP-SGD steps were spent per {unit}, but this "
                                           f"holder's config has dp_sgd.unit {self.cfg.dp_sgd.unit}: no single ε "
                                           "would hold; restore the config")
            mine = self.cfg.data.unit_field
            fields = [(self._trainer_file, (tr or {}).get("dp_sgd_unit_field"))]
            if signed and "unit_field" in signed[-1]:
                fields.append((led, signed[-1]["unit_field"]))
            for where, field in fields:
                if self.cfg.dp_sgd.unit == "group" and field is not None and field != mine:
                    # same unit name, another grouping: the steps so far protected each value of one field, the next
                    # would protect another's — no single "per group" ε would hold for either
                    raise HolderStateError(f"{where}'s record-level DP-SGD steps were spent per group of "
                                           f"data.unit_field {field!r}, but this holder's config has data.unit_field "
                                           f"{mine!r}: no single ε would hold; restore the config")
        if signed:
            if tr is None:
                raise HolderStateError(f"{self._trainer_file} is missing but {led} records record-level DP-SGD "
                                       f"releases of {signed[-1]['steps']} steps: its accountant would restart at 0; "
                                       "restore it")
            self._check_trainer_steps(tr, 0, signed[-1]["steps"], f"{led}'s signed releases record")
            hist = self._checkpoint_history(tr)
            if not history_extends(signed[-1]["history"], hist):
                raise HolderStateError(f"{self._trainer_file}'s record-level accountant history {hist} does not extend "
                                       f"the last signed release's {signed[-1]['history']}: restore the checkpoint")
        if tr is not None:
            try:
                self.trainer.load_state_dict(tr)
            except (ValueError, RuntimeError) as e:   # H1: the same run id, another model or optimizer since it joined
                raise PolicyRefused(f"the run's model or training settings differ from those {self._trainer_file} was "
                                    f"trained with ({type(e).__name__}): the coordinator changed the run") from None
        # H7 after a crash: a round released in the ledger is never taken part in again
        released = self.budget.released_rounds()
        w = self.welcomed
        if w.included_rounds > len(released):
            # the coordinator's ledger has this holder's update in more sums than its own ledger released: a new or
            # emptied state_dir, or an old backup (an audit restarted a holder with another state_dir mid-run: it
            # rejoined with its DP-SGD accountant at 0 steps and its ledger without its first rounds, said nowhere
            # before `securefed verify`). Fail closed; a coordinator that lies here can only stop this holder.
            where = (f"{self.state_dir} holds no state of this run" if st is None else
                     f"{led} records {len(released)} release(s)")
            raise HolderStateError(
                f"the coordinator's ledger has this holder's update in {w.included_rounds} released sum(s), the last in "
                f"round {w.last_included_round}, but {where}: this is not the state_dir it took part with, or its "
                "state was lost or restored from an older backup; restore the newest state (going on would forget "
                "that privacy spend)")
        if released:
            self.next_round = max(self.next_round, max(released) + 1)

    def _check_anchors(self, st: dict | None, ledger, tr: dict | None) -> None:
        """HolderStateError unless the state file, the ledger and the checkpoint agree (federation.md §6): no file
        missing that the others imply, the ledger extending the state file's anchor (its length and head), the
        checkpoint holding at least the steps the state file records. Needs no run id: `check_state` asks it before
        the holder connects, `_load_state` again at the welcome."""
        entries = ledger.entries
        if st is None:
            if entries or tr is not None:
                what = f"{ledger.path} holds {len(entries)} entries" if entries else f"{self._trainer_file} exists"
                raise HolderStateError(f"{self._state_file} is missing but {what}: this holder's state was lost or "
                                       "deleted; restore it from a backup (starting afresh could lose privacy spend "
                                       "or take part in a round twice)")
            return
        if st["version"] != STATE_VERSION:
            return
        n, head = st["ledger_entries"], st["ledger_head"]
        if len(entries) < n or ledger.head_at(n) != head:
            raise HolderStateError(
                f"{ledger.path} has {len(entries)} entries but {self._state_file} anchors {n} (head {head[:16]}…): the "
                "ledger was cut back, deleted or replaced; restore it from a backup (its releases' spend "
                "would be lost)")
        want = st.get("trainer")
        if want is not None:
            if tr is None:
                raise HolderStateError(f"{self._trainer_file} is missing but {self._state_file} records a "
                                       "checkpoint; restore it from a backup")
            self._check_trainer_steps(tr, want.get("step") or 0, want.get("dp_sgd_steps"),
                                      f"{self._state_file} records")

    @staticmethod
    def _checkpoint_history(tr: dict) -> list[list]:
        """The record-level accountant's (σ, q, steps) history a trainer checkpoint holds ([] without DP-SGD)."""
        acc = tr.get("dp_sgd_accountant")
        return [list(h) for h in acc.get("history", [])] if isinstance(acc, dict) else []

    def _check_trainer_steps(self, tr: dict, step: int, dp_steps: int | None, source: str) -> None:
        got_step = int(tr.get("step", 0)) if isinstance(tr.get("step"), int) else -1
        got_dp = sum(int(h[2]) for h in self._checkpoint_history(tr))
        if got_step < step or (dp_steps is not None and got_dp < dp_steps):
            raise HolderStateError(f"{self._trainer_file} holds {got_step} steps ({got_dp} record-level DP-SGD steps) "
                                   f"but {source} {step} ({dp_steps}): an older checkpoint would forget spend; "
                                   "restore the newest one")

    def _write_state_file(self) -> None:
        """holder_state.json (version 2): the next round, the ledger's length and head (every ledger append is
        anchored before and after), and what the last checkpoint holds (§6)."""
        if self.welcomed is None or self.budget is None:
            return
        led = self.budget.ledger
        atomic_write_text(self._state_file, json.dumps({
            "version": STATE_VERSION, "run_id": self.welcomed.run_id.hex(), "next_round": self.next_round,
            "ledger_entries": len(led.entries), "ledger_head": led.head, "trainer": self._trainer_anchor}) + "\n")

    def _save_state(self) -> None:
        from securefed.runtime.rundir import atomic_torch_save

        state = self.trainer.state_dict()
        if "dp_sgd_accountant" in state and self.cfg.dp_sgd.unit == "group":
            # what one group was (dp.md §10.2): steps per patient id must not go on per another field's value
            state["dp_sgd_unit_field"] = self.cfg.data.unit_field
        atomic_torch_save(state, self._trainer_file)
        self._trainer_anchor = {"step": int(self.trainer.step), "dp_sgd_steps": getattr(self.trainer, "dp_steps", None)}
        self._write_state_file()

    # ------------------------------------------------------------------ the round
    def handle(self, round_index: int, stage: int, payload: bytes) -> bytes | None:
        """One stage message in, the reply out (None: no reply — not in this round, refused silently,
        or a simulated dropout). Bad input is logged and answered with silence or a refusal."""
        if self.welcomed is None:
            log.warning("holder %d: message before the welcome; ignored", self.id)
            return None
        try:
            stage = Stage(stage)
        except ValueError:
            log.warning("holder %d: unknown stage %r; ignored", self.id, stage)
            return None
        if stage == Stage.OFFER:
            return None if self._vanishes(round_index, stage) else self._on_offer(round_index, payload)
        rs = self._round
        if rs is None or rs.offer.round != round_index:
            log.warning("holder %d: stage %s for round %d, which it is not in; ignored", self.id, stage.name, round_index)
            return None
        if self._vanishes(round_index, stage):
            return None
        try:
            if stage not in holder_stages(self.welcomed.aggregation):
                raise ValueError(f"stage {stage.name} is not a stage of aggregation {self.welcomed.aggregation!r}")
            if stage > Stage.PLAN and rs.spec is None:   # every later stage follows an accepted plan (the table, §4)
                raise ValueError(f"stage {stage.name} before this holder accepted a plan for the round")
            name = {Stage.CKKS_SECAGG_START: "secagg_start", Stage.CKKS_SECAGG_SHARES: "secagg_shares"}.get(
                stage, stage.name.lower())
            return getattr(self, "_on_" + name)(rs, payload)
        except IdentityInUse:    # not this round's problem: this holder must stop (transport.md §10, exit 9)
            self._end_secagg(rs)
            raise IdentityInUse(f"another process is taking part as holder {self.id} with this holder's identity key: "
                                f"its signed secure-aggregation keys replaced this client's in round {round_index}") from None
        except (ValueError, SecAggAborted) as e:   # every codec/MUST-rule error of the stack is a ValueError
            log.warning("holder %d: round %d stage %s refused: %s", self.id, round_index, stage.name, e)
            if stage in SECAGG_STAGES and not isinstance(e, UnexpectedMessage):
                self._end_secagg(rs)   # C10: secrets and the mask buffer erased
            # UnexpectedMessage (a repeated or out-of-order stage message) leaves the client as it was: it
            # still answers the next stage once, instead of dropping out of a round it already released in
            return None
        except (TypeError, KeyError, AttributeError, IndexError, OverflowError, struct.error) as e:
            # A message no check above refused yet no handler could process (the class a stage/payload fuzz of every
            # mode found as tracebacks that ended `securefed client`): fail closed — this round's secrets go, no
            # reply, one line; the holder stays for the next round. Its own faults (a ledger it cannot write: OSError,
            # HolderStateError) still stop it, and so does any error while it trains (MODEL: θ is hash-checked
            # before it trains, H4, so what fails there is this holder's own code or data, not the message).
            if stage == Stage.MODEL:
                raise
            log.error("holder %d: round %d stage %s: a message this holder cannot process (%s: %s); it leaves the "
                      "round", self.id, round_index, stage.name, type(e).__name__, e)
            self._end_secagg(rs)
            rs.refused = True
            return None

    def end_round(self, round_index: int) -> None:
        """The round is over for this holder (finished, aborted or dropped): keep the trainer's state."""
        if self._round is not None and self._round.offer.round == round_index:
            self._end_secagg(self._round)          # C10: whatever the round left, secrets and masks go
            last = round_index >= self.welcomed.rounds
            # a DP-SGD holder's release saved this very state (nothing trains after it): not written twice a round
            # (trainer.pt holds AdamW's moments, 2·P floats: 186 MB at 20m, 10 GB at 1.3b)
            if self._round.trained and not self._round.saved and (round_index % self.cfg.save_every == 0 or last):
                self._save_state()
            self._round = None

    @staticmethod
    def _end_secagg(rs: _Round) -> None:
        if rs.secagg is not None:
            rs.secagg.close()
            rs.secagg = None
        if rs.encode_entropy is not None:
            rs.encode_entropy.discard()
            rs.encode_entropy = None

    def _vanishes(self, r: int, stage: Stage) -> bool:
        """Simulated dropouts (federation.dropout_rate: silent from a random secagg stage of a round on;
        vanish_at: silent for good from one stage on — the in-process twin of a killed holder process)."""
        if self.cfg.vanish_at is not None and (r, stage) >= tuple(self.cfg.vanish_at):
            return True
        if self.cfg.dropout_rate <= 0 or self.welcomed.aggregation == "plain":
            return False
        rng = np.random.default_rng([self.cfg.secret_seed, r, self.id, 7])
        if rng.random() >= self.cfg.dropout_rate:
            return False
        stages = secagg_stages(self.welcomed.aggregation)
        return stage >= stages[int(rng.integers(len(stages)))]

    def _refuse(self, r: int, reason: str, spec: RoundSpec | None) -> bytes:
        log.warning("holder %d refuses round %d: %s", self.id, r, reason)
        self.budget.refuse(r, reason, spec)
        return encode(Decision(r, self.id, False, reason[:500]))

    def _on_offer(self, r: int, payload: bytes) -> bytes | None:
        try:
            offer = decode_as(payload, Offer)
        except MessageError as e:
            log.warning("holder %d: malformed offer: %s", self.id, e)
            return None
        if offer.round != r:
            log.warning("holder %d: offer for round %d arrived as round %d; ignored", self.id, offer.round, r)
            return None
        if self.id not in offer.cohort:
            return None
        if not 1 <= r <= self.welcomed.rounds:
            # a round the run does not have: taken up, it moved next_round there for good (an Offer for round
            # 2³¹ − 1 locked the holder out of the rest of the run: a review). Silence; nothing saved or appended
            log.warning("holder %d: offer for round %d of a run of %d rounds; ignored", self.id, r, self.welcomed.rounds)
            return None
        if not set(offer.cohort) <= set(self.roster.keys):   # H2: a cohort of made-up ids inflates n_shares
            return self._refuse(r, "the offered cohort names holders that are not on the roster", None)
        if r < self.next_round:   # H2, H7: never a round it already took part in
            # answered and logged, not appended: the round is already in the ledger or was skipped, and a replaying
            # coordinator must not grow the signed, fsync'd ledger by one entry per replay (an audit: 3,000 → 2.3 MB)
            why = f"round {r} was already taken part in (next round {self.next_round})"
            log.warning("holder %d refuses round %d: %s", self.id, r, why)
            return encode(Decision(r, self.id, False, why))
        self.next_round = r + 1
        self._save_next_round()
        try:
            why = self._check_spec(offer.spec, len(offer.cohort))
        except ValueError as e:   # a plan no encoder can be built from (a share std below ½, a ring it would wrap)
            why = f"the offered plan cannot be encoded with: {e}"
        why = why or self._record_level_problem()   # at the offer only: at the plan its steps are already trained
        if not why and r == 1 and offer.model_sha256 != self.welcomed.init_sha256:
            # H2, dp.md §13.4: round 1 trains θ0 itself, so its θ must be the initial model the Welcome declared (and
            # summary.json and the report then state): a coordinator declaring a public θ0 and sending another is
            # refused here, by every holder of round 1's cohort
            why = (f"round 1's model (SHA-256 {offer.model_sha256[:16]}…) is not the initial model the run declared "
                   f"({self.welcomed.init_sha256[:16]}…)")
        if why:
            return self._refuse(r, why, offer.spec)
        self._round = _Round(offer)
        return encode(Decision(r, self.id, True))

    def _save_next_round(self) -> None:
        self._write_state_file()

    def _check_spec(self, spec: RoundSpec, n: int) -> str | None:
        """H2/H3/H5: a plan this holder will encode with, at or above its floors, within its cap."""
        pol, w = self.cfg.policy, self.welcomed
        if spec.mode != w.privacy_mode or spec.dim != w.dim:
            return f"the plan's mode/dimension ({spec.mode}, {spec.dim}) differ from the welcome's"
        if w.aggregation != "plain" and spec.ring_bits != w.secagg.ring_bits:
            return f"the plan's ring ({spec.ring_bits} bits) differs from the secure-aggregation ring"
        if PRIVACY_ORDER[spec.mode] < PRIVACY_ORDER[pol.privacy_mode]:
            return f"privacy mode {spec.mode!r} is below this holder's floor {pol.privacy_mode!r}"
        sigma = _own_noise(spec)
        if spec.mode != "none" and sigma < pol.min_noise_multiplier:
            return f"noise multiplier {sigma:.4g} is below this holder's floor {pol.min_noise_multiplier}"
        if n < pol.min_cohort or (w.aggregation != "plain" and n < 3):
            return f"a cohort of {n} holders is below this holder's minimum of {max(pol.min_cohort, 3)}"
        if spec.mode == "central" and spec.n_shares != len(self.roster.keys):
            # H2/H5: a central plan is quantized for the whole population (dp.md §6.4), the N of the sampling rate
            # q = m/N the release ε is amplified by; N is the roster's size, not the coordinator's claim (dp.md §2.1)
            return (f"the plan is made for a population of {spec.n_shares} holders, but this holder's roster lists "
                    f"{len(self.roster.keys)}")
        if spec.mode != "none" and self.budget.delta is None and spec.delta > DEFAULT_DELTA:
            # H2: without its own policy.delta a holder takes the run's δ, but never a weaker one than the default
            # (an audit's coordinator sent δ = 0.5: the release then read ε 28.0 under a cap of 50, ε 52.7 at 10⁻⁵)
            return (f"the plan's delta {spec.delta:.3g} is above {DEFAULT_DELTA:g}, the most this holder accepts "
                    "without its own policy.delta")
        if spec.mode != "none" and not self.budget.adopt_delta(spec.delta):
            return f"the plan's delta {spec.delta:.3g} differs from this holder's delta {self.budget.delta:.3g}"
        t_min = w.secagg.thresholds(n).min_survivors if w.aggregation != "plain" and n >= 3 else None
        if spec.mode == "none":
            return None if pol.epsilon_cap is None else "mode none: epsilon would be infinite, above this holder's cap"
        ok, proj = self.budget.admits(spec, min_survivors=t_min)
        return None if ok else _over_cap("joining", proj, spec, t_min, pol.epsilon_cap)

    def _over_record_cap(self) -> float | None:
        """dp.md §10.5: this holder's record-level ε after one more round's DP-SGD steps (the welcome's local steps at
        its own rate, on top of every step its accountant holds) when that passes its own dp_sgd.epsilon_cap; else
        None. The coordinator chooses the batch size, local steps and rounds; the cap is what the holder's own config
        lets them spend."""
        dp = self.cfg.dp_sgd
        if not dp.enabled or dp.epsilon_cap is None or self.trainer is None:
            return None
        proj = self.trainer.dp_epsilon_after(self.welcomed.local_steps)
        return proj if proj > dp.epsilon_cap else None

    def _record_level_problem(self) -> str | None:
        """Why this round would pass the record-level cap (dp.md §10.5), checked at the offer, before it trains: the
        accountant counts every step trained, released or not."""
        proj = self._over_record_cap()
        if proj is None:
            return None
        dp = self.cfg.dp_sgd
        return (f"its {self.welcomed.local_steps} DP-SGD steps would take this holder's record-level epsilon to "
                f"{epsilon_text(proj)} (at delta {dp.delta:.3g}), above its dp_sgd.epsilon_cap {dp.epsilon_cap:g}")

    def _on_model(self, rs: _Round, payload: bytes | bytearray) -> None:
        import torch

        if rs.trained:
            raise ValueError("a second model for this round")
        if len(payload) != 4 * self.welcomed.dim or model_sha256(payload) != rs.offer.model_sha256:
            raise ValueError("the model is not the one the offer announced (H4)")
        words = np.frombuffer(payload, dtype="<f4")   # a view; the trainer copies θ into the model (never aliases it)
        if not words.dtype.isnative:
            words = words.astype(np.float32)
        # read in place: a writable buffer of this round (the gRPC holder's BufferSink), and immutable bytes too (the
        # in-process channel's θ, shared by every holder): train_round only reads θ (tests/federation/test_holder.py
        # ::test_the_holder_never_writes_into_the_model_it_received), so the copy that read-only memory once got
        # (4·P bytes per holder and round) is not made; torch warns of memory it may not write, which it does not
        if words.flags.writeable:
            theta = torch.from_numpy(words)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                theta = torch.from_numpy(words)
        on_device = self._encodes_on_device(rs)
        t0 = time.perf_counter()
        # the keyword only when it is used: a host-path holder calls train_round(θ) as it always has
        up = self.trainer.train_round(theta, delta_on_device=True) if on_device else self.trainer.train_round(theta)
        rs.delta, rs.trained = (up.delta if on_device else up.delta.numpy()), True
        # The loss is a function of this holder's data outside the noised sum, sent only without DP: under DP-SGD an
        # audit read a record's membership from it (ε ≥ 2.7 against 0.10 reported); distributed DP's coordinator is not
        # trusted with it, and central DP's would publish it in metrics.jsonl (dp.md §10, PV-22, PV-26)
        loss = None if self.cfg.dp_sgd.enabled or self.welcomed.privacy_mode != "none" else float(up.mean_loss)
        rs.report = Ready(rs.offer.round, self.id, int(up.tokens), loss, False, up.record_epsilon)
        # what the operator of a deployed holder sees of each round (securefed client logs at INFO): trained,
        # released (with the ε its own ledger then holds), settled
        log.info("holder %d: round %d/%d trained: %d tokens, loss %.4g, %.1f s%s", self.id, rs.offer.round,
                 self.welcomed.rounds, up.tokens, up.mean_loss, time.perf_counter() - t0,
                 "" if up.record_epsilon is None else f", record-level epsilon {epsilon_text(up.record_epsilon)}")
        return None

    def _encodes_on_device(self, rs: _Round) -> bool:
        """secagg.md §6.6: keep Δ on the training device and clip and round it there — pure secure aggregation in
        modes none / central (distributed DP's rotation and noise, CKKS and plain stay on the host)."""
        mode = self.cfg.hardware.encode_on
        if mode == "host" or self.welcomed.aggregation != "secagg" or rs.offer.spec.mode == "distributed":
            return False
        return mode == "device" or self.trainer.parent.fabric.device.type == "cuda"

    def _encode_on_device(self, rs: _Round, spec: RoundSpec, weight: float, entropy) -> tuple | None:
        """secagg.md §6.6: (ring vector, ClipInfo); None (Δ now on the host in ``rs.delta``) when the device runs
        out of memory: the round goes on on the host path, said in the log, rather than the holder dropping out."""
        import torch

        from securefed.privacy.device_encode import clip_and_quantize_on_device

        try:
            return clip_and_quantize_on_device(rs.delta, weight, spec_plan(spec), entropy)
        except torch.cuda.OutOfMemoryError:   # (torch.OutOfMemoryError from torch 2.5)
            log.warning("holder %d: round %d: no device memory to clip and round the update there; "
                        "doing it on the host (hardware.encode_on=host avoids the attempt)", self.id, spec.round)
            if rs.encode_entropy is not None:
                rs.encode_entropy.discard()
            rs.delta = rs.delta.cpu().numpy()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None

    def _on_plan(self, rs: _Round, payload: bytes) -> bytes:
        plan = decode_as(payload, Plan)
        spec, offered = plan.spec, rs.offer.spec
        if rs.spec is not None or rs.refused:
            # a refusal is final: a second Plan was accepted and released (in-process and Ray channels, where a
            # coordinator can ask one stage twice), and each refusable one appended a signed entry (a review)
            raise ValueError("a second plan for this round" + (" after this holder refused or left it" if rs.refused
                                                                 else ""))
        same = ("mode", "mechanism", "clip", "noise_multiplier", "delta", "ring_bits", "dim", "sampling")
        if plan.round != rs.offer.round or any(getattr(spec, k) != getattr(offered, k) for k in same):
            raise ValueError("the plan differs from the offer (H5)")
        if self.id not in spec.participants or not set(spec.participants) <= set(rs.offer.cohort):
            raise ValueError("the plan's participants are not drawn from the offered cohort or omit this holder")
        # distributed (and plain) rounds: one share per participant. Central mode plans the ring for the whole
        # population (dp.md §6.4): at least the participants, or the sum could wrap; more only lowers γ
        if spec.n_shares != len(spec.participants) and not (spec.mode == "central" and spec.n_shares > len(spec.participants)):
            raise ValueError("the plan's share count differs from its participants")
        if not rs.trained:
            raise ValueError("plan before the model: nothing was trained")
        w = self.welcomed
        why = self._check_spec(spec, len(spec.participants))
        if not why and rs.secagg is not None and w.aggregation == "secagg":   # H6, the part the Offer could not settle
            cohort = set(rs.secagg_cohort)
            if not cohort <= set(spec.participants) or len(cohort) > spec.n_shares:
                why = "the secure-aggregation cohort is not drawn from the plan's participants (H6)"
            elif spec.mode == "distributed" and self.cfg.policy.min_noise_multiplier > 0:
                # H2's floor again, at the cohort that will really sum: each share carries σ/√n_shares, so a plan
                # whose n_shares exceeds the secure-aggregation cohort (an audit: 60 made-up ids, 4 real) sums at
                # most σ·√(|cohort| / n_shares) — 0.25 of the floor there. (The cap is re-checked at release.)
                z = _own_noise(spec) * math.sqrt(len(cohort) / spec.n_shares)
                if z < self.cfg.policy.min_noise_multiplier:
                    why = (f"with {len(cohort)} of the plan's {spec.n_shares} noise shares in the secure-aggregation "
                           f"cohort the noise multiplier is at most {z:.4g}, below this holder's floor "
                           f"{self.cfg.policy.min_noise_multiplier} (H6)")
        if not why and not _all_finite(rs.delta):   # said, not a silent dropout (an audit: lr 1000, every round aborted)
            why = "its local training diverged: the update is not finite (a lower train.lr?)"
        if why:
            self._end_secagg(rs)   # a dropout of U2 \\ U3 to the protocol: its pairs are unmasked without it
            rs.refused = True
            return self._refuse(plan.round, why, spec)
        rs.spec = spec
        entropy = rs.encode_entropy or self.entropy.for_party(plan.round, self.id, "encode")   # the same bits
        on_device = None
        if not isinstance(rs.delta, np.ndarray):   # secagg.md §6.6: weighted, clipped and rounded where it was trained
            on_device = self._encode_on_device(rs, spec, plan.weight, entropy)
            if on_device is None:
                entropy = self.entropy.for_party(plan.round, self.id, "encode")   # the host path below, fresh bits
        if on_device is not None:
            rs.masked_part, info = on_device
        else:
            d, w32 = rs.delta, np.float32(plan.weight)
            if clippable_in_place(d):
                # the round's own Δ (the trainer's, let go below): w·Δ and the clip where it is, the same values as
                # the copies, without two fresh vectors a round (each a page-faulting pass: stop 43)
                if w32 != 1:
                    np.multiply(d, w32, out=d)
                x, info = l2_clip(d, spec.clip, inplace=True)            # w·Δ, then the clip bound C
            else:
                x, info = l2_clip(d * w32, spec.clip)
            if w.aggregation == "plain":
                rs.plain = x
            elif w.aggregation == "ckks+secagg":
                ckks_part, masked = self._route_plan.split(x)
                rs.ckks_part = np.asarray(ckks_part, dtype=np.float64)
                rs.masked_part, _ = spec_encode(spec, x, entropy, clipped=(masked, info))
            else:
                rs.masked_part, _ = spec_encode(spec, x, entropy, clipped=(x, info), executor=self._mask_pool())
        rs.delta = None
        if w.aggregation == "secagg" and rs.secagg is not None:   # masks (being) expanded: only y = x + M remains (§6.5)
            rs.secagg.provide_input(rs.masked_part)
            rs.masked_part = None
        rs.report = replace(rs.report, clipped=None if spec.mode == "distributed" else bool(info.clipped))
        return encode(rs.report)

    # -- CKKS (protocols/ckks.md §3, §5) --------------------------------------------------------
    def _on_ckks_rotate(self, rs: _Round, payload: bytes) -> bytes:
        msg = decode_as(payload, CkksRotate)
        if msg.round != rs.offer.round or self.id not in msg.key_holders:
            raise ValueError("key rotation for another round or without this holder")
        adv = self.ckks.advertise(generation=msg.generation, round_index=msg.round,
                                  entropy=self.entropy.for_party(msg.round, self.id, "ckks-advert"))
        self._ckks_gen = (msg.generation, frozenset(msg.key_holders))
        return ckks_encode(adv)

    def _on_ckks_keys(self, rs: _Round, payload: bytes) -> bytes:
        msg = decode_as(payload, CkksAdverts)
        gen, holders = getattr(self, "_ckks_gen", (None, frozenset()))
        if msg.round != rs.offer.round or msg.generation != gen or expected_leader(holders, gen) != self.id:
            raise ValueError("key adverts for another generation, or this holder is not its leader")
        adverts = [ckks_decode(a) for a in msg.adverts]
        if not all(isinstance(a, KeyAdvertMsg) and a.holder in holders for a in adverts):
            raise ValueError("relayed adverts are not key adverts of this generation's key holders")
        pub, shares, _ = self.ckks.make_keys(generation=gen, round_index=msg.round, adverts=adverts,
                                             roster=self._ckks_roster)
        return encode(CkksKeys(msg.round, gen, ckks_encode(pub), tuple(ckks_encode(s) for s in shares)))

    def _on_ckks_share(self, rs: _Round, payload: bytes) -> bytes:
        msg = decode_as(payload, CkksShare)
        gen, holders = getattr(self, "_ckks_gen", (None, frozenset()))
        share, advert = ckks_decode(msg.share), ckks_decode(msg.leader_advert)
        if msg.generation != gen or not isinstance(share, KeyShareMsg) or not isinstance(advert, KeyAdvertMsg):
            raise ValueError("key share for another generation or malformed")
        leader = expected_leader(holders, gen)
        try:
            self.ckks.accept_share(share, leader_advert=advert, leader=self._ckks_roster[leader], generation=gen)
        except (KeyShareError, ValueError) as e:
            self.ckks.forget_key()
            return encode(Decision(msg.round, self.id, False, f"key share refused: {e}"[:500]))
        return encode(Decision(msg.round, self.id, True))

    def _release(self, rs: _Round, stage: Stage, cohort_size: int) -> None:
        """H7: charge the round once, durably, before the first message that carries its data."""
        if stage in rs.answered:
            raise ValueError(f"{stage.name} was already answered this round: a holder releases once")
        if rs.spec is None:
            raise ValueError("no plan for this round")
        if not rs.answered:
            w = self.welcomed
            t_min = w.secagg.thresholds(cohort_size).min_survivors if w.aggregation != "plain" and cohort_size >= 3 else None
            # H3 again: the cap was checked for the plan's cohort; this cohort may be smaller (fewer noise shares)
            ok, proj = self.budget.admits(rs.spec, min_survivors=t_min) if rs.spec.mode != "none" else (True, 0.0)
            if not ok:
                why = _over_cap(f"releasing to a cohort of {cohort_size}", proj, rs.spec, t_min, self.cfg.policy.epsilon_cap)
                self.budget.refuse(rs.spec.round, why, rs.spec)
                raise ValueError(why)
            if getattr(self.trainer, "accountant", None) is not None:
                # record-level DP-SGD: the steps just trained are spent once this round is released, and a
                # restart skips a released round (H7): its accountant must be on disk first, not at the next
                # checkpoint (an audit lost 4 of 16 steps across a stop with checkpoint_every=2)
                self._save_state()
                rs.saved = True
            rl = None
            if getattr(self.trainer, "dp_steps", None) is not None:   # signed with the release (§6)
                from securefed.privacy.holder_ledger import record_level_entry

                rl = record_level_entry(self.trainer.dp_history(), self.cfg.dp_sgd.delta, unit=self.cfg.dp_sgd.unit,
                                        padded_rows=self.trainer.dp_padded_rows, unit_field=self.cfg.data.unit_field,
                                        sample_rate=self.trainer.dp_public_rate)
            entry = self.budget.release(rs.spec, min_survivors=t_min, record_level=rl)
            log.info("holder %d: round %d update released (%s, %s aggregation); ledger epsilon %s", self.id,
                     rs.spec.round, stage.name, w.aggregation, _eps(entry.get("epsilon")))
        rs.answered.add(stage)

    def _on_ckks_upload(self, rs: _Round, payload: bytes) -> bytes:
        msg = decode_as(payload, CkksUploadRequest)
        if msg.round != rs.offer.round or self.id not in msg.cohort or not set(msg.cohort) <= set(rs.spec.participants):
            raise ValueError("upload request for another round or cohort (H6)")
        if msg.key_id != self.ckks.key_id or msg.generation != self.ckks.generation:
            raise ValueError("upload request under a key this holder does not hold")
        if len(msg.cohort) < self.cfg.policy.min_cohort:
            raise ValueError("the CKKS cohort is below this holder's minimum")
        up = self.ckks.encrypt(msg.round, rs.ckks_part, cohort=msg.cohort)
        self._release(rs, Stage.CKKS_UPLOAD, len(msg.cohort))
        rs.ckks_cohort, rs.ckks_part = frozenset(msg.cohort), None
        return ckks_encode(up)

    def _on_ckks_decrypt(self, rs: _Round, payload: bytes) -> bytes:
        agg = ckks_decode(payload)
        if not isinstance(agg, AggregateMsg):
            raise ValueError("not an aggregate")
        total = self.ckks.decrypt(agg, length=self._route_plan.ckks_size, cohort=rs.ckks_cohort,
                                  roster=self._ckks_roster, round_index=rs.offer.round,   # H9
                                  entropy=self.entropy.for_party(rs.offer.round, self.id, "ckks-flood"))
        return np.ascontiguousarray(total, dtype="<f8").tobytes()

    # -- plain (the warned baseline) -------------------------------------------------------------
    def _on_plain_upload(self, rs: _Round, payload: bytes) -> bytes:
        if rs.plain is None:
            raise ValueError("no plain update this round")
        self._release(rs, Stage.PLAIN_UPLOAD, len(rs.spec.participants))
        out, rs.plain = np.ascontiguousarray(rs.plain, dtype="<f4").tobytes(), None
        return out

    # -- secure aggregation (protocols/secagg.md §6) ------------------------------------------------
    def _on_secagg_start(self, rs: _Round, payload: bytes) -> bytes:
        """H6. Under ``secagg`` before the model, against the Offer (the Plan is checked at PLAN); under
        ``ckks+secagg`` after the CKKS upload, against the Plan and the CKKS cohort (federation.md §4.3)."""
        start = secagg_decode(payload)
        w = self.welcomed
        if not isinstance(start, RoundStart) or rs.secagg is not None or rs.secagg_cohort:
            raise ValueError("not a RoundStart, or secure aggregation already started this round")
        early = w.aggregation == "secagg"
        if early and (rs.trained or rs.spec is not None):
            raise ValueError("under secagg the key stages come before the model (federation.md §4.3)")
        if not early and rs.masked_part is None:
            raise ValueError("nothing encoded for secure aggregation")
        spec = rs.offer.spec if early else rs.spec
        members = rs.offer.cohort if early else spec.participants
        cohort = set(start.cohort)
        if start.round_index != rs.offer.round or self.id not in cohort or not cohort <= set(members):
            raise ValueError("the RoundStart's round or cohort differs from the plan (H6)")
        if w.aggregation == "ckks+secagg" and not cohort <= rs.ckks_cohort:
            raise ValueError("the masked cohort is not drawn from the CKKS survivors")
        if start.ring_bits != spec.ring_bits or len(cohort) > spec.n_shares:
            raise ValueError("the RoundStart's ring or cohort size exceeds the plan (quantization bound)")
        _check_floor(w.secagg, self.cfg.policy.secagg_floor(), len(cohort), min_cohort=self.cfg.policy.min_cohort)
        if early:   # P of the update this holder will encode under the offered plan
            plan = spec_plan(spec)
            length = plan.encoded_dim if isinstance(plan, DiscretePlan) else spec.dim
        else:
            length = rs.masked_part.shape[0]
        ctx = session_context(w.run_id, bytes.fromhex(rs.offer.model_sha256))
        client = SecAggClient(self.id, identity=self.identity, roster=self.roster, config=w.secagg,
                              session_context=ctx, round_index=rs.offer.round, vector=None if early else rs.masked_part,
                              length=length, entropy=self.entropy.for_party(rs.offer.round, self.id, "secagg"),
                              executor=self._mask_pool())
        rs.secagg, rs.secagg_cohort, rs.masked_part = client, tuple(sorted(cohort)), None   # one RoundStart a round
        return client.handle(payload)             # C1 (P against the plan's encoded length)

    def _secagg(self, rs: _Round, payload: bytes) -> bytes:
        if rs.secagg is None:
            raise ValueError("no secure-aggregation round in progress")
        return rs.secagg.handle(payload)

    def _on_secagg_shares(self, rs: _Round, payload: bytes) -> bytes:
        reply = self._secagg(rs, payload)
        spec = rs.offer.spec
        if self.welcomed.aggregation == "secagg" and spec.mode in ("none", "central"):
            # secagg.md §6.5: the rounding bits of quantize's first try, drawn on the mask threads while the
            # holder trains — the encode entropy's own bytes in its own order (distributed DP draws noise too)
            rs.encode_entropy = PrefetchedEntropy(self.entropy.for_party(rs.offer.round, self.id, "encode"),
                                                  quantize_draws(spec.dim), self._mask_pool())
        return reply

    def _on_secagg_masked(self, rs: _Round, payload: bytes) -> bytes:
        reply = self._secagg(rs, payload)        # C3/C4 checked; the masked input exists only here
        self._release(rs, Stage.SECAGG_MASKED, len(rs.secagg_cohort))
        return reply

    def _on_secagg_consistency(self, rs: _Round, payload: bytes) -> bytes:
        return self._secagg(rs, payload)

    def _on_secagg_unmask(self, rs: _Round, payload: bytes) -> bytes:
        req = secagg_decode(payload)
        reply = self._secagg(rs, payload)        # C6–C9: alive = the survivor list this holder signed
        if isinstance(req, UnmaskRequest) and Stage.SECAGG_MASKED in rs.answered:
            entry = self.budget.settle(rs.spec, survivors=len(req.alive))   # H8
            log.info("holder %d: round %d settled with %d survivors; ledger epsilon %s", self.id, rs.spec.round,
                     len(req.alive), _eps(entry.get("epsilon")))
        return reply


def _eps(e) -> str:
    """A ledger entry's ε for the holder's log (the ledger may hold it as a number or as "inf")."""
    v = math.inf if e is None else float(e)
    return "inf (no holder-level DP noise)" if math.isinf(v) else epsilon_text(v)


def _own_noise(spec: RoundSpec) -> float:
    """The noise multiplier a plan gives this holder's update: in distributed mode the noise it adds follows
    z_Δ (data_noise_multiplier), not the announced σ (H2's floor, and H6's at the real cohort)."""
    return min(spec.noise_multiplier, spec.data_noise_multiplier) if spec.mode == "distributed" else spec.noise_multiplier


def _over_cap(what: str, proj: float, spec: RoundSpec, t_min: int | None, cap: float | None) -> str:
    return (f"{what} would take this holder to epsilon {epsilon_text(proj)} (at delta {spec.delta:.3g}, assuming only "
            f"{spec.min_survivors(t_min)} survivors), above its cap {cap}")


def _check_floor(cfg: SecAggConfig, floor: SecAggConfig, n: int, *, min_cohort: int) -> None:
    """The secure-aggregation parameters of a cohort of n at or above this holder's floor (audit SEC-11)."""
    if n < max(3, min_cohort):
        raise ValueError(f"a secure-aggregation cohort of {n} is below this holder's minimum")
    got, need = cfg.thresholds(n), floor.thresholds(n)
    if got.degree < need.degree or got.threshold < need.threshold or got.min_survivors < need.min_survivors:
        raise ValueError(f"graph degree/threshold/t_min {got.degree}/{got.threshold}/{got.min_survivors} are weaker "
                         f"than this holder's floor {need.degree}/{need.threshold}/{need.min_survivors}")
