"""One data holder's process in a networked federation (protocols/transport.md §5, §6, §8).

    connect (mTLS, own certificate) → Join → for each round:
        ROUND manifest (or WAIT: not in this cohort) → θ_r (hash-checked) → K local steps → Δ
        clip → quantize → SecAggClient stages (messages carried unchanged) → state saved atomically

Network loss (UNAVAILABLE, a broken stream, a deadline): reconnect with capped exponential back-off,
Join again, continue at the coordinator's next round. A refused certificate (PERMISSION_DENIED) is
final (exit 3). The holder's own state — trainer/optimizer state and its own hash-chained ledger of
the rounds it released a masked input in — lives in ``--state DIR`` and is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import grpc
import numpy as np

from securefed.secagg import Roster
from securefed.primitives.quantize import plan_quantization, quantize
from securefed.primitives.rng import SystemEntropy
from securefed.privacy.clipping import l2_clip
from securefed.secagg import SecAggAborted, SecAggClient, SecAggConfig, UnexpectedMessage
from securefed.secagg.messages import RoundStart
from securefed.secagg.messages import decode as secagg_decode
from securefed.transport.client import FATAL_CODES, Backoff, Refused, TransportClient
from securefed.transport.coordinator import SECAGG_STAGES, Stage
from securefed.transport.frames import FrameError, Kind
from securefed.transport.pki import Layout, holder_id_from_cert, load_identity
from securefed.transport.service import load_client_credentials, parse_json
from securefed.transport.workload import theta_hash

__all__ = ["NetClient"]

log = logging.getLogger("securefed.client")
EXIT = {"ok": 0, "error": 1, "usage": 2, "auth": 3, "state": 4, "unreachable": 6, "policy": 7}


class PolicyRefused(RuntimeError):
    """The coordinator asked for secure-aggregation settings weaker than this holder accepts."""


def check_holder_policy(cfg: SecAggConfig, manifest: dict, *, floor: SecAggConfig) -> None:
    """The holder's own floor, checked before anything is encoded (audit SEC-11).

    The coordinator's welcome must not be able to weaken the protocol: the holder compares its
    ring, threshold fraction and neighbour-graph degree with its own policy ``floor`` (default: the
    complete graph, f = 0.5, k = 32), and the quantization plan's max_clients with the cohort.
    """
    cohort = manifest.get("cohort", [])
    n = len(cohort)
    if n < 3:
        raise PolicyRefused(f"cohort of {n} holders: secure aggregation needs at least 3")
    if int(manifest.get("max_clients", -1)) != n:
        raise PolicyRefused(f"manifest max_clients {manifest.get('max_clients')} differs from the cohort size {n}")
    if cfg.ring_bits < floor.ring_bits:
        raise PolicyRefused(f"ring of {cfg.ring_bits} bits is below this holder's floor of {floor.ring_bits}")
    if cfg.threshold_fraction < floor.threshold_fraction:
        raise PolicyRefused(f"threshold fraction {cfg.threshold_fraction} is below this holder's floor "
                            f"{floor.threshold_fraction}")
    got, need = cfg.thresholds(n), floor.thresholds(n)
    if got.degree < need.degree or got.threshold < need.threshold or got.min_survivors < need.min_survivors:
        raise PolicyRefused(f"graph degree/threshold/t_min {got.degree}/{got.threshold}/{got.min_survivors} are "
                            f"weaker than this holder's floor {need.degree}/{need.threshold}/{need.min_survivors}")


class NetClient:
    def __init__(self, holder_id: int, *, pki: str | Path, target: str, state_dir: str | Path,
                 workload_factory, server_name: str | None = None, max_failures: int = 20,
                 backoff: Backoff | None = None, policy: SecAggConfig | None = None) -> None:
        self.policy = policy or SecAggConfig()
        lay = Layout(pki)
        d = lay.holder_dir(holder_id)
        cert = (d / "cert.pem").read_bytes()
        if holder_id_from_cert(cert) != holder_id:
            raise ValueError(f"certificate in {d} does not name holder {holder_id}")
        self.id, self.identity = holder_id, load_identity(d / "identity.key")
        self.roster = Roster.load(lay.roster)
        if self.roster.keys.get(holder_id) != self.identity.public_bytes:
            raise ValueError(f"holder {holder_id}: identity key does not match its roster entry")
        ca = d / "ca.pem" if (d / "ca.pem").exists() else lay.ca_cert
        self.creds = load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=ca)
        self.target, self.server_name, self.factory = target, server_name, workload_factory
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_failures, self.backoff = max_failures, backoff or Backoff()
        self.workload, self.welcome, self.tc = None, None, None

    # ------------------------------------------------------------------ outer loop
    def run(self) -> int:
        failures = 0
        while True:
            try:
                if self.tc is None:
                    self.tc = TransportClient(self.target, self.creds, server_name=self.server_name)
                self._join()
                r = max(int(self.welcome["next_round"]), self._state.get("next_round", 0))
                while r < int(self.welcome["rounds"]):
                    r = self._round(r)
                    failures = 0
                    self.backoff.reset()
                log.info("holder %d: all %d rounds done", self.id, self.welcome["rounds"])
                return EXIT["ok"]
            except PolicyRefused as e:
                log.error("holder %d: refusing the coordinator's settings: %s", self.id, e)
                return EXIT["policy"]
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code in FATAL_CODES:
                    log.error("holder %d: the coordinator refused this holder's certificate", self.id)
                    return EXIT["auth"]
                why = f"{code}"
            except (FrameError, Refused, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
            failures += 1
            if failures > self.max_failures:
                log.error("holder %d: giving up after %d failed attempts", self.id, failures - 1)
                return EXIT["unreachable"]
            delay = self.backoff.next_delay()
            log.warning("holder %d: connection problem (%s); retry %d in %.1fs", self.id, why, failures, delay)
            time.sleep(delay)
            self.tc.reconnect()

    def _join(self) -> None:
        self.welcome = self.tc.join({"version": 1, "holder": self.id}, timeout=60)
        if self.workload is None:
            self.workload = self.factory(self.id, self.welcome)
            self._load_state()
        elif self._state.get("run_id") not in (None, self.welcome["run_id"]):
            raise ValueError("the coordinator now runs a different run id")

    # ------------------------------------------------------------------ local state
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "holder_state.json"

    @property
    def _torch_state_file(self) -> Path:
        return self.state_dir / "holder_state.pt"

    def _load_state(self) -> None:
        self._state = {}
        st = None
        if self._torch_state_file.exists():   # LM holders: optimizer tensors (torch, weights_only: never runs code)
            import torch

            st = torch.load(self._torch_state_file, weights_only=True)
        elif self._state_file.exists():
            st = _loads_state(self._state_file.read_bytes())    # JSON + typed arrays: loading never runs code
        if st is not None:
            if st.get("run_id") != self.welcome["run_id"]:
                raise ValueError(f"holder state in {self.state_dir} belongs to another run")
            self.workload.load_state_dict(st["workload"])
            self._state = st
            log.info("holder %d: restored local state (next round %d)", self.id, st["next_round"])
        from securefed.privacy.ledger import Ledger

        self.ledger = Ledger(self.state_dir / "ledger.jsonl")

    def _save_state(self, next_round: int) -> None:
        self._state = {"version": 1, "run_id": self.welcome["run_id"], "next_round": next_round,
                       "workload": self.workload.state_dict()}
        if _holds_tensors(self._state):
            from securefed.runtime.rundir import atomic_torch_save

            atomic_torch_save(self._state, self._torch_state_file)
        else:
            _atomic_write(self._state_file, _dumps_state(self._state))

    def _record_release(self, r: int, manifest: dict) -> None:
        """Own ledger: one entry per round this holder released a masked input (before sending it)."""
        if any(e.get("round") == r and e.get("run_id") == self.welcome["run_id"] for e in self.ledger.entries):
            return
        self.ledger.append({"round": r, "run_id": self.welcome["run_id"], "clip": manifest["clip"],
                            "privacy_mode": manifest["privacy_mode"], "cohort_size": len(manifest["cohort"]),
                            "model_sha256": manifest["model_sha256"]})

    # ------------------------------------------------------------------ one round
    def _fetch(self, r: int, s: int, kinds, *, budget: float, max_len: int | None = None):
        end = time.monotonic() + budget
        while True:
            f = self.tc.fetch(r, s, kinds, wait_s=min(30.0, max(1.0, end - time.monotonic())), max_len=max_len)
            if f.kind != Kind.WAIT:
                return f, None
            info = parse_json(f.payload, "wait")
            if info.get("reason") not in ("not_yet", "not_open") or time.monotonic() > end:
                return None, info

    def _round(self, r: int) -> int:
        wl = self.welcome
        dl = wl["deadlines"]
        f, info = self._fetch(r, Stage.ROUND, (Kind.ROUND,), budget=dl["join"] + dl["train"])
        if f is None:
            return int(info.get("next_round", r + 1)) if info.get("reason") != "not_open" else r
        man = parse_json(f.payload, "manifest")
        if man.get("round") != r or self.id not in man.get("cohort", []):
            raise FrameError("round manifest is for another round or does not list this holder")
        dim = int(wl["dim"])
        m, info = self._fetch(r, Stage.MODEL, (Kind.MODEL,), budget=dl["control"], max_len=4 * dim)
        if m is None or len(m.payload) != 4 * dim or theta_hash(m.payload).hex() != man["model_sha256"]:
            log.warning("holder %d: round %d model missing or not the announced one; skipping", self.id, r)
            return r + 1
        cfg = SecAggConfig(**wl["secagg"])
        check_holder_policy(cfg, man, floor=self.policy)  # before any local work: a refused round costs nothing
        if int(man["ring_bits"]) != cfg.ring_bits:
            raise PolicyRefused("the manifest's ring differs from the secure-aggregation ring")
        t0 = time.perf_counter()
        theta = np.frombuffer(m.payload, dtype="<f4").astype(np.float32)
        upd = self.workload.train_round(theta, r)
        # as RoundPrivacy.encode (modes none/central): clip to the round's C, quantize with its scale;
        # plan_quantization refuses a scale that could wrap the ring for max_clients holders
        clipped, clip_info = l2_clip(upd.delta, float(man["clip"]))
        qplan = plan_quantization(clip=float(man["clip"]), ring_bits=cfg.ring_bits, max_clients=int(man["max_clients"]),
                                  scale=float(man["quant_scale"]))
        x = quantize(clipped, qplan, SystemEntropy())
        ctx = b"securefed/transport/v1|" + bytes.fromhex(wl["run_id"]) + theta_hash(m.payload)
        sc = SecAggClient(self.id, identity=self.identity, roster=self.roster, config=cfg, session_context=ctx,
                          round_index=r, vector=x, entropy=SystemEntropy())
        del x, clipped
        result = {"tokens": upd.tokens, "loss": upd.mean_loss, "clipped": bool(clip_info.clipped), "norm": clip_info.norm,
                  "train_seconds": time.perf_counter() - t0}
        self.tc.submit(r, Stage.ADVERTISE, Kind.RESULT, json.dumps(result).encode(), timeout=dl["control"])
        for s in SECAGG_STAGES:
            budget = dl["train"] if s == Stage.ADVERTISE else dl["upload"] + dl["control"]
            f, info = self._fetch(r, s, (Kind.SECAGG,), budget=budget)
            if f is None:
                log.warning("holder %d: dropped from round %d at stage %d (%s)", self.id, r, s, info.get("reason"))
                break
            if s == SECAGG_STAGES[0]:
                _check_round_start(f.payload, man)
            try:
                reply = sc.handle(f.payload)
            except (SecAggAborted, UnexpectedMessage) as e:
                log.warning("holder %d: secure aggregation aborted in round %d: %s", self.id, r, e)
                break
            _test_pause(r, s)
            if s == Stage.MASKED:
                self._record_release(r, man)
            timeout = dl["upload"] if s == Stage.MASKED else dl["control"]
            self.tc.submit(r, s, Kind.MASKED if s == Stage.MASKED else Kind.SECAGG, reply, timeout=timeout)
        self._save_state(r + 1)
        log.info("holder %d: round %d done (up %d B, down %d B)", self.id, r, self.tc.bytes_up, self.tc.bytes_down)
        return r + 1


def _check_round_start(payload: bytes, manifest: dict) -> None:
    """The policy floor was checked against the manifest's cohort: the secure-aggregation round must
    run on exactly that cohort, or a coordinator could pass the floor with a small announced cohort and
    run the protocol on another (different graph degree, more values in the ring) (audit SEC-11)."""
    try:
        msg = secagg_decode(payload)
    except Exception:
        raise PolicyRefused("the secure-aggregation round start could not be decoded") from None
    if not isinstance(msg, RoundStart) or tuple(sorted(msg.cohort)) != tuple(sorted(manifest["cohort"])):
        raise PolicyRefused("the secure-aggregation round's cohort differs from the round manifest's")
    if msg.round_index != manifest["round"] or msg.ring_bits != int(manifest["ring_bits"]):
        raise PolicyRefused("the secure-aggregation round start differs from the round manifest (round or ring)")


def _test_pause(r: int, s: int) -> None:
    """Test hook (tests/transport e2e): SECUREFED_TEST_PAUSE="round,stage,marker" makes this holder
    write ``marker`` and hang just before submitting that stage, so a test can SIGKILL it mid-round
    deterministically. Unset in any real deployment."""
    spec = os.environ.get("SECUREFED_TEST_PAUSE")
    if not spec:
        return
    pr, ps, marker = spec.split(",", 2)
    if (int(pr), int(ps)) == (r, s):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)


def _holds_tensors(obj) -> bool:
    """True if a torch tensor is anywhere in obj (checked without importing torch)."""
    if type(obj).__module__.startswith("torch"):
        return True
    if isinstance(obj, dict):
        return any(_holds_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensors(v) for v in obj)
    return False


def _dumps_state(obj) -> bytes:
    """JSON with numpy arrays as {"__ndarray__": base64, "dtype", "shape"} (no pickle: audit SEC-12)."""
    import base64

    def enc(o):
        if isinstance(o, np.ndarray):
            return {"__ndarray__": base64.b64encode(np.ascontiguousarray(o).tobytes()).decode(),
                    "dtype": o.dtype.str, "shape": list(o.shape)}
        if isinstance(o, dict):
            return {str(k): enc(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [enc(v) for v in o]
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        return o

    return json.dumps(enc(obj), sort_keys=True).encode()


def _loads_state(data: bytes):
    import base64

    def dec(o):
        if isinstance(o, dict):
            if "__ndarray__" in o:
                dtype = np.dtype(o["dtype"])
                if dtype.kind not in "fiub":
                    raise ValueError("holder state: unexpected array dtype")
                return np.frombuffer(base64.b64decode(o["__ndarray__"]), dtype=dtype).reshape(o["shape"]).copy()
            return {k: dec(v) for k, v in o.items()}
        if isinstance(o, list):
            return [dec(v) for v in o]
        return o

    return dec(json.loads(data))


def _atomic_write(path: Path, data: bytes) -> None:
    """Write-to-temp + fsync + rename (mkstemp files are mode 0600); torch is not imported."""
    from securefed.runtime.rundir import atomic_write_bytes

    atomic_write_bytes(path, data)
