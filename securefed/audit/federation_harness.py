"""A whole federation the attacker can drive: the real Coordinator and Holders of securefed/federation.

The roles run unchanged, in one process (protocols/federation.md §1). Only the channel is the
attacker's: :class:`ScriptedChannel` carries exactly the bytes the in-process channel carries, and
lets a scenario play a malicious coordinator — rewrite or withhold a stage message (``tamper``),
ignore a holder's reply as if it never arrived (``ignore``), or send any holder any extra message
(``ask``) — while it records every message and reply (``log``). Secrets come from the seeded test
entropy (``deterministic_secrets``), so every scenario is reproducible bit for bit.

    fed = tiny_federation(workdir, overrides=[...], policies={1: {"epsilon_cap": 4.0}})
    fed.coordinator.run_round(1)                       # the honest engine, round by round
    fed.channel.ask(1, Stage.OFFER, 2, offer_bytes)    # ... and whatever the attacker adds
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from securefed.federation.coordinator import Coordinator
from securefed.federation.holder import Holder
from securefed.federation.inproc import InProcChannel
from securefed.federation.stages import Stage

__all__ = ["TINY", "Exchange", "ScriptedChannel", "Federation", "tiny_federation", "holder_ledger", "one_torch_thread"]

log = logging.getLogger("securefed.audit")

# 4 holders x 4 stdlib sources of 30 kB, vocab 512, rows of 32 tokens, K = 2, batch 4 (the tiny model)
TINY = ("data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
        "train.local_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.eval_batch_size=64",
        "federation.rounds=3", "federation.eval_every=100", "federation.weighting=uniform", "baseline=false",
        "deterministic_secrets=true")


@contextmanager
def one_torch_thread():
    """The tiny model on shared cores: more torch threads only contend (several times slower when loaded)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Exchange:
    round: int
    stage: Stage
    holder: int
    payload: bytes
    reply: bytes | None
    extra: bool = False          # sent by the attacker through ask(), not by the coordinator


class ScriptedChannel(InProcChannel):
    """InProcChannel with the attacker's hooks (module doc)."""

    def __init__(self, holders: Mapping[int, Holder], *,
                 tamper: Callable[[int, Stage, int, bytes], bytes | None] | None = None,
                 ignore: Callable[[int, Stage, int, bytes], bool] | None = None) -> None:
        super().__init__(holders)
        self.tamper, self.ignore = tamper, ignore
        self.log: list[Exchange] = []

    def _call(self, r: int, stage: int, h: int, payload: bytes, max_reply: int) -> bytes | None:
        stage = Stage(stage)
        if self.tamper is not None:
            payload = self.tamper(r, stage, h, payload)
            if payload is None:              # withheld: the holder never sees this stage
                return None
        reply = super()._call(r, stage, h, payload, max_reply if stage != Stage.MODEL else 0)
        self.log.append(Exchange(r, stage, h, payload, reply))
        if reply is not None and self.ignore is not None and self.ignore(r, stage, h, reply):
            return None                      # the coordinator acts as if the reply never came
        return reply

    def ask(self, r: int, stage: Stage, h: int, payload: bytes) -> bytes | None:
        """An extra message to holder ``h``, outside the coordinator's round; its reply (or None)."""
        reply = self.holders[h].handle(r, int(stage), payload)
        self.log.append(Exchange(r, Stage(stage), h, payload, reply, extra=True))
        return reply

    def sent(self, *, stage: Stage | None = None, holder: int | None = None, round: int | None = None,
             answered: bool | None = None) -> list[Exchange]:
        return [e for e in self.log if (stage is None or e.stage == stage) and (holder is None or e.holder == holder)
                and (round is None or e.round == round) and (answered is None or (e.reply is not None) == answered)]


@dataclass
class Federation:
    cfg: object
    coordinator: Coordinator
    channel: ScriptedChannel
    holders: dict[int, Holder]
    roster: object
    identities: dict
    root: Path
    configs: dict = field(default_factory=dict)

    def start(self) -> None:
        """The coordinator's start (Coordinator.start): run-directory files, then every holder's Join."""
        self.coordinator.start()

    def ledger(self, h: int) -> list[dict]:
        return holder_ledger(self.holders[h])

    def restart_holder(self, h: int, *, policy: Mapping | None = None, **fields) -> Holder:
        """A new Holder object for ``h`` on the same state directory (a restarted holder process), with
        ``policy`` changes to its own floors and other HolderConfig ``fields``; not yet welcomed."""
        cfg = dataclasses.replace(self.configs[h], **fields)
        if policy:
            cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, **policy))
        self.configs[h] = cfg
        holder = Holder(cfg, identity=self.identities[h], roster=self.roster)
        self.holders[h] = self.channel.holders[h] = holder
        self.channel.gone.discard(h)
        return holder

    def model_bytes(self) -> bytes:
        return self.coordinator.outer.params.numpy().astype("<f4").tobytes()


def holder_ledger(holder: Holder) -> list[dict]:
    from securefed.privacy import read_ledger

    path = holder.state_dir / "ledger.jsonl"
    return read_ledger(path) if path.exists() else []


def tiny_federation(workdir: str | Path, *, overrides=(), policies: Mapping[int, Mapping] | None = None,
                    holder_fields: Mapping[int, Mapping] | None = None, cache_dir: str | Path | None = None,
                    tamper=None, ignore=None, start: bool = True) -> Federation:
    """The tiny federation (TINY + ``overrides``) with its real roles over a ScriptedChannel.

    ``policies``: {holder: {HolderPolicy field: value}} — a holder's own floors and cap, replacing the
    run's (simulation.holder_configs); ``holder_fields``: other HolderConfig fields (vanish_at, …).
    ``start``: run ``Coordinator.start`` now (the run directory's files and every holder's Join, as
    ``Coordinator.run`` does before its first round); else call ``Federation.start`` later."""
    from securefed.federation.data import coordinator_data
    from securefed.federation.simulation import holder_configs
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.runtime.config import load_run_config
    from securefed.runtime.rundir import RunDir
    from securefed.secagg import Roster, generate_identity

    root = Path(workdir)
    ov = list(TINY) + ([f"data.cache_dir={cache_dir}"] if cache_dir else []) + list(overrides)
    cfg = load_run_config(overrides=ov)
    n = cfg.federation.n_holders
    identities = {h: generate_identity(DeterministicEntropy.from_int(4242 + h)) for h in range(1, n + 1)}
    server_identity = generate_identity(DeterministicEntropy.from_int(4242))   # signs the coordinator's ledgers
    roster = Roster.from_identities(identities)
    rd = RunDir(root / "run")
    rd.create(resume=False)
    configs = holder_configs(cfg, rd.root)
    for h, fields in (policies or {}).items():
        configs[h] = dataclasses.replace(configs[h], policy=dataclasses.replace(configs[h].policy, **fields))
    for h, fields in (holder_fields or {}).items():
        configs[h] = dataclasses.replace(configs[h], **fields)
    holders = {h: Holder(c, identity=identities[h], roster=roster) for h, c in configs.items()}
    channel = ScriptedChannel(holders, tamper=tamper, ignore=ignore)
    coord = Coordinator(cfg, channel, rd, data=coordinator_data(cfg, progress=False), roster=roster,
                        identity=server_identity)
    fed = Federation(cfg, coord, channel, holders, roster, identities, root, configs)
    if start:
        fed.start()
    return fed
