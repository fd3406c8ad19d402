"""End-to-end `securefed simulate`: the run-directory contract, resume, secure = plain within the
quantization bound, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from securefed.cli import main
from securefed.privacy import read_ledger
from securefed.runtime.config import load_run_config
from securefed.federation.coordinator import StateError
from securefed.federation.simulation import Simulation


def test_cli_demo_writes_the_run_directory_contract(tmp_path, small_overrides, capsys):
    out = tmp_path / "run"
    args = ["simulate", "--quiet", "--out", str(out)] + [a for o in small_overrides for a in ("--set", o)]
    assert main(args) == 0
    for rel in ("config.yaml", "metrics.jsonl", "summary.json", "privacy/ledger.jsonl", "report/report.md",
                "report/report.html", "checkpoints/latest.pt", "model/config.json", "baseline/metrics.jsonl"):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregation"] == "secagg"
    assert math.isfinite(summary["fed_eval_ppl"]) and math.isfinite(summary["central_eval_ppl"])
    # both models learned something: far below the uniform-guess perplexity (vocab 512)
    assert summary["fed_eval_ppl"] < 512 and summary["central_eval_ppl"] < 512
    # the baseline ran at its own lr (the demo's baseline_lr, not train.lr) and the federation's global batch
    cfg = load_run_config(overrides=small_overrides)
    assert cfg.baseline_lr is not None and cfg.baseline_lr != cfg.train.lr
    assert summary["central_lr"] == cfg.baseline_lr
    assert summary["central_batch_size"] == cfg.federation.cohort_size * cfg.train.batch_size
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]                       # rounds are numbered 1..R
    for key in ("clients_sampled", "clients_survived", "train_loss", "eval_loss", "eval_ppl", "tokens_seen",
                "bytes_up", "bytes_down", "seconds", "aggregation"):
        assert key in rows[0], key
    assert len(read_ledger(out / "privacy" / "ledger.jsonl")) == 2
    for h in range(1, 5):   # each simulated holder's own config and its own ledger: released, then settled
        assert (out / "holders" / str(h) / "holder.yaml").is_file()
        own = read_ledger(out / "holders" / str(h) / "ledger.jsonl")
        assert [(e["round"], e["status"]) for e in own] == [(1, "released"), (1, "settled"), (2, "released"),
                                                           (2, "settled")]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    ids = tok("def main():", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    _complete_run_keeps_no_private_key(out, capsys, args, small_overrides)


def _complete_run_keeps_no_private_key(out, capsys, args, overrides):
    """SYS-34 (federation.md §6): the run is complete, so every private key simulate generated in pki/ is gone — the
    CA's, the coordinator's TLS and ledger-signing keys, each holder's TLS and identity keys: 3 + 2·4 = 11 — said in one
    line; the certificates, roster and public keys stay, and verify and report need nothing more (no note of keys held).
    A --resume of it is refused as before, in one line (exit 2, no traceback), by the CLI and by Simulation alike."""
    from securefed.runtime.rundir import RunDirError
    from securefed.transport.pki import Layout

    err = capsys.readouterr().err
    lay = Layout(out / "pki")
    assert len(lay.private_files()) == 11 and not any(p.exists() for p in lay.private_files())
    assert not [p for p in (out / "pki").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert err.count("private keys") == 1 and f"removed the 11 private keys this run generated in {lay.root}" in err
    # SYS-35: the holders' AdamW moments (of each one's own gradients) went too; their ledgers and state files stay
    assert err.count("optimizer states") == 1 and "removed the 4 holders' optimizer states" in err
    for h in range(1, 5):
        hd = out / "holders" / str(h)
        assert not (hd / "trainer.pt").exists() and (hd / "ledger.jsonl").is_file() and (hd / "holder_state.json").is_file()
    for p in (lay.ca_cert, lay.server_cert, lay.roster, *(lay.holder_dir(h) / "cert.pem" for h in range(1, 5))):
        assert p.is_file(), p
    assert main(["verify", str(out)]) == 0
    said = capsys.readouterr()
    assert "private signing key" not in said.out + said.err
    coordinator = json.loads((out / "privacy" / "keys.json").read_text())["coordinator"]   # pinned, as a reviewer would
    own = out / "holders" / "1" / "ledger.jsonl"
    assert main(["verify", str(out), "--coordinator-key", coordinator, "--roster", str(lay.roster),
                 "--holder-ledger", str(own)]) == 0, capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "private signing key" not in (out / "report" / "report.md").read_text()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "Traceback" not in err
    with pytest.raises(RunDirError, match="holds a finished run"):
        Simulation(load_run_config(overrides=overrides), out, progress=False, resume=True)


def _final_theta(run_dir) -> torch.Tensor:
    """θ after the last round: the light checkpoint (version 4) names the model file holding the outer state."""
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ck["version"] == 4 and ck["in_flight"] is None and ck["pending"] is None
    return torch.load(run_dir / "checkpoints" / ck["model_file"], weights_only=True)["outer"]["theta"]


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _route_indices(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """(ckks, secagg) indices into the flat vector, from the route plan the run wrote (ckks_plan.json)."""
    plan = json.loads((run_dir / "ckks_plan.json").read_text())
    idx = {"ckks": [], "secagg": []}
    for t in plan["tensors"]:
        idx[t["route"]].append(np.arange(t["offset"], t["offset"] + t["numel"]))
    return tuple(np.concatenate(idx[k]) if idx[k] else np.zeros(0, np.int64) for k in ("ckks", "secagg"))


@pytest.mark.slow   # two 3-round runs: 23-73 s on 2 shared cores
def test_resume_is_bit_identical(tmp_path, small_overrides):
    ov = small_overrides + ["federation.rounds=3", "deterministic_secrets=true", "baseline=false",
                            "outer.name=nesterov", "outer.lr=0.7"]
    cfg = load_run_config(overrides=ov)
    Simulation(cfg, tmp_path / "a", progress=False).run()
    first = Simulation(cfg, tmp_path / "b", progress=False, stop_after_round=1).run()
    assert first == {"stopped_after_round": 1}
    Simulation(cfg, tmp_path / "b", progress=False, resume=True).run()
    assert torch.equal(_final_theta(tmp_path / "a"), _final_theta(tmp_path / "b"))
    la, lb = (read_ledger(tmp_path / d / "privacy" / "ledger.jsonl") for d in ("a", "b"))
    assert [e["round"] for e in la] == [e["round"] for e in lb] == [1, 2, 3]  # nothing lost or double-counted
    # each run signs its ledger with its own fresh coordinator key: every field but the signatures (and so
    # the chain links) agrees
    unsigned = [[{k: v for k, v in e.items() if k not in ("sig", "prev_hash")} for e in led] for led in (la, lb)]
    assert unsigned[0] == unsigned[1]
    assert _metrics(tmp_path / "a")[-1]["eval_ppl"] == _metrics(tmp_path / "b")[-1]["eval_ppl"]


# the outer optimizer's gain on the first step: FedAvg lr·Δ̄; Nesterov lr·(Δ̄ + β·m) with m = Δ̄, so lr·(1 + β); with a
# momentum warmup β_0 = 0 (the gpu presets' optimizer): lr
@pytest.mark.parametrize("outer, gain", [
    (["outer.name=fedavg", "outer.lr=1.0"], 1.0),
    (["outer.name=nesterov", "outer.lr=0.7", "outer.momentum=0.9", "outer.momentum_warmup=0"], 0.7 * 1.9),
    (["outer.name=nesterov", "outer.lr=0.7", "outer.momentum=0.9", "outer.momentum_warmup=28"], 0.7),
])
def test_secure_aggregation_equals_plain_within_quantization_bound(tmp_path, small_overrides, outer, gain):
    ov = small_overrides + ["federation.rounds=1", "deterministic_secrets=true", "baseline=false", *outer]
    thetas = {}
    for mode in ("secagg", "plain"):
        cfg = load_run_config(overrides=ov + [f"aggregation.mode={mode}"])
        Simulation(cfg, tmp_path / mode, progress=False).run()
        thetas[mode] = _final_theta(tmp_path / mode)
    from securefed.primitives.quantize import plan_quantization

    plan = plan_quantization(clip=cfg.privacy.clip, ring_bits=32, max_clients=4)
    # |mean error| <= (n / scale) / Σw, and Σw >= 1 (the largest holder has weight 1)
    diff = (thetas["secagg"] - thetas["plain"]).abs().max().item()
    assert 0 < diff <= gain * plan.sum_error_bound


def test_bad_input_leaves_no_run_directory(tmp_path, small_overrides, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never"
    args = ["simulate", "--quiet", "--out", str(out), "--set", f"data.source={empty}"]
    args += [a for o in small_overrides if not o.startswith("data.source") for a in ("--set", o)]
    assert main(args) == 2
    assert not out.exists()
    assert "securefed simulate" in capsys.readouterr().err
    assert main(["simulate", "--set", "train.local_steps=0"]) == 2
    assert main(["simulate", "--set", "federation.bogus=1"]) == 2
    assert main(["simulate", "--preset", "nope"]) == 2


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, small_overrides):
    from securefed.transport.pki import Layout

    cfg = load_run_config(overrides=small_overrides + ["federation.rounds=1", "baseline=false"])
    Simulation(cfg, tmp_path / "r", progress=False, stop_after_round=1).run()
    keys = Layout(tmp_path / "r" / "pki").private_files()      # stopped early: its --resume needs them (SYS-34)
    assert len(keys) == 3 + 2 * 4 and all(p.is_file() for p in keys)
    assert all((tmp_path / "r" / "holders" / str(h) / "trainer.pt").is_file() for h in range(1, 5))   # and these (SYS-35)
    other = load_run_config(overrides=small_overrides + ["federation.rounds=1", "baseline=false", "model.preset=20m"])
    with pytest.raises(StateError, match="checkpoint is for model"):
        Simulation(other, tmp_path / "r", progress=False, resume=True).run()
    keys[-1].unlink()                                           # deleted by hand: one error, not a traceback
    with pytest.raises(StateError, match="1 private keys of this run are missing"):
        Simulation(cfg, tmp_path / "r", progress=False, resume=True).run()


@pytest.mark.slow   # 3 rounds of 6 holders: 24-40 s on 2 shared cores
def test_dropouts_are_survived_and_recorded(tmp_path, small_overrides):
    cfg = load_run_config(overrides=small_overrides + ["federation.n_holders=6", "data.max_sources=6",
                                                       "federation.dropout_rate=0.25", "baseline=false",
                                                       "deterministic_secrets=true", "federation.rounds=3"])
    Simulation(cfg, tmp_path / "d", progress=False).run()
    rows = _metrics(tmp_path / "d")
    recovered = [r for r in rows if "aborted" not in r and 0 < r["clients_survived"] < r["clients_sampled"]]
    assert recovered, f"no round recovered from a dropout: {rows}"
    assert all(np.isfinite(r["train_loss"]) for r in rows)


def test_hybrid_ckks_route_equals_plain_fedavg_within_documented_error(tmp_path, small_overrides):
    ov = small_overrides + ["federation.rounds=1", "deterministic_secrets=true", "baseline=false"]
    thetas = {}
    for mode in ("plain", "ckks+secagg"):
        extra = [f"aggregation.mode={mode}"] + (["aggregation.ckks.enabled=true"] if mode != "plain" else [])
        cfg = load_run_config(overrides=ov + extra)
        out = tmp_path / mode.replace("+", "_")
        Simulation(cfg, out, progress=False).run()
        thetas[mode] = _final_theta(out)
    ckks_idx, sec_idx = _route_indices(tmp_path / "ckks_secagg")
    assert ckks_idx.size > 0 and sec_idx.size > 0 and ckks_idx.size + sec_idx.size == thetas["plain"].numel()
    from securefed.primitives.quantize import plan_quantization

    qbound = plan_quantization(clip=cfg.privacy.clip, ring_bits=32, max_clients=4).sum_error_bound
    diff = (thetas["ckks+secagg"] - thetas["plain"]).abs().numpy()
    assert diff[sec_idx].max() <= qbound
    assert diff[ckks_idx].max() <= cfg.aggregation.ckks.error_bound(4, cfg.privacy.clip) + 1e-6


@pytest.mark.slow   # 4 rounds of 5 holders under ckks+secagg: 20-30 s on 2 shared cores
def test_ckks_route_dropouts_after_the_ckks_sum_are_charged_and_verify(tmp_path, small_overrides, capsys):
    """A holder silent from the masked stage on is in the CKKS part of the sum only (A \\ B, federation.md §4.1
    step 6): the server ledger charges it (n_masked: the count the others settle at) and the run verifies."""
    run = tmp_path / "ab"
    over = small_overrides + ["federation.n_holders=5", "data.max_sources=5", "federation.rounds=4", "baseline=false",
                              "deterministic_secrets=true", "federation.weighting=uniform", "aggregation.mode=ckks+secagg",
                              "aggregation.ckks.enabled=true", "privacy.mode=central", "privacy.mechanism=gaussian",
                              "privacy.noise_multiplier=1.0", "privacy.clip=1.0", "privacy.force_unlearnable=true",
                              "federation.dropout_rate=0.4"]
    Simulation(load_run_config(overrides=over), run, progress=False).run()
    rows = {r["round"]: r for r in _metrics(run)}
    split = [r for r in rows.values() if r.get("ckks_only")]
    assert split, f"no holder dropped between the CKKS sum and its masked input: {list(rows.values())}"
    server = {e["round"]: e for e in read_ledger(run / "privacy" / "ledger.jsonl")}
    for r in split:
        e = server[r["round"]]
        assert set(r["ckks_only"]) <= set(e["survivors"]) and e["n_masked"] == r["clients_survived"] < e["n_survivors"]
    summary = json.loads((run / "summary.json").read_text())   # the ε says what it protects: one holder, replace-one
    assert (summary["epsilon_unit"], summary["neighbouring_relation"]) == ("holder", "replace-one")
    assert math.isfinite(summary["epsilon"]) and 0 < summary["delta"] < 1 and "record_unit" not in summary
    capsys.readouterr()
    assert main(["verify", str(run)]) == 0, capsys.readouterr()


def test_a_simulation_whose_every_round_aborted_exits_5_not_0(tmp_path, tiny_run, capsys, monkeypatch):
    """A newcomer's review: a run whose every round aborted (there, a CKKS route whose messages no holder could take;
    here, every holder refuses every round at its offer) left the model untouched and ended "finished", exit 0,
    when it was shorter than network.max_aborted_rounds. Now it says so and exits 5, "ended": "too_few"."""
    from securefed.federation.holder import Holder

    monkeypatch.setattr(Holder, "_record_level_problem", lambda self: "this test refuses every round")
    out = tmp_path / "run"
    rc = main(["simulate", "--out", str(out), *[a for t in tiny_run for a in ("--set", t)]])
    err = capsys.readouterr().err
    assert rc == 5, err
    assert "all 2 rounds aborted; the model was never updated" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended"] == "too_few" and summary["rounds"] == 0


def test_a_simulation_that_stops_for_too_few_holders_exits_5_not_0(tmp_path, tiny_run, capsys, monkeypatch):
    """An audit of the Ray backend (stop 36): a run whose holders all failed to start 'finished' with 0 rounds, a
    summary and a report -- exit 0 on every backend, where `securefed server` exits 5. Here every holder's own
    floor refuses the run's settings (privacy none < its floor distributed): simulate now says why it stopped and
    exits 5, and summary.json records "ended": "too_few"."""
    from securefed.federation import simulation as sim_mod

    real = sim_mod.holder_configs

    def strict(*a, **kw):
        return {h: sim_mod._override(hc, {"policy": {"privacy_mode": "distributed"}}) for h, hc in real(*a, **kw).items()}
    monkeypatch.setattr(sim_mod, "holder_configs", strict)
    out = tmp_path / "run"
    rc = main(["simulate", "--out", str(out), *[a for t in tiny_run for a in ("--set", t)]])
    err = capsys.readouterr().err
    assert rc == 5, err
    assert "securefed simulate: the run stopped after 0 of 2 rounds: too few holders took part" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended"] == "too_few" and summary["rounds"] == 0
    # nothing was released: the run closes an empty server ledger with its signed end-of-run record (verify said "no
    # server ledger found ... No ε can be stated", exit 1, and the report "PRIVACY LEDGER NOT VERIFIED")
    assert (out / "privacy" / "ledger.jsonl").read_bytes() == b""
    assert main(["verify", str(out)]) == 0
    assert "privacy: epsilon=0 (no round released anything" in capsys.readouterr().out
    assert "NOT VERIFIED" not in (out / "report" / "report.md").read_text()
    (out / "privacy" / "end.json").unlink()          # without the record, an empty ledger may be a cut one
    assert main(["verify", str(out)]) == 1
    assert "no signed end-of-run record" in capsys.readouterr().err
    (out / "privacy" / "ledger.jsonl").unlink()      # and a missing ledger is still a problem
    assert main(["verify", str(out)]) == 1
    assert "no server ledger found" in capsys.readouterr().err


def test_verify_refuses_records_of_two_runs(tmp_path, tiny_run, capsys, monkeypatch):
    """One coordinator key signs every run of a federation (its pki is reused), so each record verified on its own:
    an end-of-run record the coordinator signed for another run -- say one that released nothing, beside a run whose
    ledger was deleted, which read "epsilon=0" -- passed. Every record must now name the same run (dp.md §7.3)."""
    from securefed.privacy.ledger import write_end_record
    from securefed.transport.pki import Layout, load_identity

    kept = {}
    remove = Simulation._remove_private_keys

    def keep_the_coordinators_key(self):   # a deployment's coordinator keeps its key; simulate removes its own (SYS-34)
        kept["key"] = load_identity(Layout(self.rd.root / "pki").server_identity)
        remove(self)
    monkeypatch.setattr(Simulation, "_remove_private_keys", keep_the_coordinators_key)
    a = tmp_path / "a"
    assert main(["simulate", "--out", str(a), *[x for t in [*tiny_run, "federation.rounds=1"] for x in ("--set", t)]]) == 0
    capsys.readouterr()
    assert main(["verify", str(a)]) == 0
    key = kept["key"]
    write_end_record(a / "privacy", run_id="ab" * 16, signer=key)      # signed by the same key, for another run
    assert main(["verify", str(a)]) == 1
    err = capsys.readouterr().err
    assert "privacy/end.json" in err and "belongs to run abababababababab…" in err and "records are of two runs" in err


def test_the_end_of_run_record_binds_the_epsilon_to_the_exported_model(tmp_path, tiny_run, capsys):
    """dp.md §7.4: the privacy/ of another run of the same coordinator is consistent on its own (its ledgers, views
    and end record all of one run) and verified beside any model. The signed end-of-run record now names the
    SHA-256 of the model the run exported, and verify checks the model in the directory against it."""
    import shutil

    a = tmp_path / "a"
    assert main(["simulate", "--out", str(a), *[x for t in [*tiny_run, "federation.rounds=1"] for x in ("--set", t)]]) == 0
    end = json.loads((a / "privacy" / "end.json").read_text())
    assert end["model_sha256"] == json.loads((a / "summary.json").read_text())["model_sha256"]
    capsys.readouterr()
    assert main(["verify", str(a)]) == 0
    model = a / "model" / "model.safetensors"
    kept = tmp_path / "kept.safetensors"
    shutil.copy(model, kept)
    with open(model, "ab") as f:              # another model beside these records
        f.write(b"\0")
    assert main(["verify", str(a)]) == 1
    assert "these privacy records are not this model's" in capsys.readouterr().err
    model.unlink()                            # a directory without its model: said, not refused
    assert main(["verify", str(a)]) == 0
    said = capsys.readouterr()
    assert "was not checked" in said.out + said.err
    shutil.copy(kept, model)
    assert main(["verify", str(a)]) == 0


def test_a_resumed_scheme_2_run_pre_flights_with_the_epsilon_its_ledger_records(tmp_path, tiny_run, monkeypatch):
    """dp.md §6.5: a run begun under accountant scheme /2 keeps /2 when resumed (PrivacySession pins the scheme of its
    first server ledger entry), but `simulate --resume` (and `server --resume`) ran the pre-flight under /3: 6 holders,
    cohorts of 3 (q = 0.5), σ = 8 -- it printed ε 0.45 per round where the ledger records 0.69 for the same round.
    The pre-flight of the resumed run is now its ledger's: ε per round = the first (full-cohort) entry's ε."""
    import securefed.privacy.preflight  # noqa: F401 - imported before the patch below: its default scheme stays /3
    from securefed.privacy import accountant as acc_mod
    from securefed.privacy.accountant import accountant_version

    cfg = load_run_config(overrides=[*tiny_run, "federation.n_holders=6", "federation.clients_per_round=3",
                                     "federation.sampling=fixed", "privacy.mode=central", "privacy.mechanism=gaussian",
                                     "privacy.noise_multiplier=8", "privacy.clip=1.0", "privacy.force_unlearnable=true",
                                     "privacy.delta=1e-3", "federation.weighting=uniform",
                                     "data.max_sources=6"])
    out = tmp_path / "run"
    monkeypatch.setattr(acc_mod, "ACCOUNTANT_SCHEME", 2)                   # the code of stop 35 began this run
    Simulation(cfg, out, progress=False, stop_after_round=1).run()
    monkeypatch.undo()
    (first,) = read_ledger(out / "privacy" / "ledger.jsonl")
    assert first["accountant_version"] == accountant_version("rdp", 2) and first["n_survivors"] == 3
    resumed = Simulation(cfg, out, resume=True, progress=False)            # the pre-flight runs here
    assert resumed.preflight.epsilon_per_round == pytest.approx(first["epsilon"], rel=1e-9)
    assert resumed.preflight.accountant_scheme == 2
    fresh = Simulation(cfg, tmp_path / "fresh", progress=False)            # a new run: scheme /3, cheaper here
    assert fresh.preflight.epsilon_per_round < 0.8 * first["epsilon"]


def test_each_holder_its_own_folder_through_simulate(tmp_path, tiny_run, capsys):
    """README: `data.holder_paths` gives each simulated holder one path of its own. simulate built every holder's
    config with the whole list and HolderConfig refused it ("a holder names exactly one path of its own"): a
    traceback, no run. Now shard i of n is holder i's path; a deployed holder (n_shards 1) still names exactly one."""
    from securefed.federation.holder_config import HolderConfig
    from securefed.training.data import DataConfig

    paths = []
    for h in range(4):
        d = tmp_path / "data" / f"ward{h}"
        d.mkdir(parents=True)
        for j in range(3):
            (d / f"note{j}.txt").write_text(f"ward {h} note {j}: " + "the patient was seen and discharged. " * 120)
        paths.append(str(d))
    run = tmp_path / "run"
    sets = [o for o in tiny_run if not o.startswith(("data.max_sources", "data.max_bytes_per_source"))]
    sets += ["federation.rounds=1", "data.holder_paths=[" + ",".join(paths) + "]"]
    assert main(["simulate", "--quiet", "--out", str(run)] + [a for s in sets for a in ("--set", s)]) == 0
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest["partition"]["method"] == "holder_paths"
    assert [h["sources"] for h in manifest["holders"]] == [[f"holder{i}:ward{i}"] for i in range(4)]   # each its own
    with pytest.raises(ValueError, match="a holder names exactly one path of its own"):
        HolderConfig(holder_id=1, state_dir=str(tmp_path / "s"), data=DataConfig(holder_paths=tuple(paths[:2])))


def test_the_end_of_run_record_closes_the_holders_own_ledgers_a_keyless_edit_cannot_drop(tmp_path, tiny_run, capsys):
    """An audit (stop 49) deleted a simulated holder's whole directory (holders/4/, its holder.yaml with it, so
    nothing said a ledger was expected there), or cut the last line of a holder's own ledger (its 'settled' entry):
    neither needs a key, and verify exited 0, stating the remaining holders' record-level ε or a larger own ε.
    The signed end-of-run record now closes every simulated holder's own ledger (dp.md §7.4): both are caught."""
    import shutil

    a = tmp_path / "a"
    assert main(["simulate", "--quiet", "--out", str(a), *[x for t in tiny_run for x in ("--set", t)]]) == 0
    end = json.loads((a / "privacy" / "end.json").read_text())
    assert sorted(end["own"]) == ["1", "2", "3", "4"] and all(v["entries"] > 0 for v in end["own"].values())
    capsys.readouterr()
    assert main(["verify", str(a)]) == 0
    for name, tamper in [
        ("a holder's directory deleted", lambda d: shutil.rmtree(d / "holders" / "4")),
        ("the last entry of a holder's own ledger cut", lambda d: (d / "holders" / "1" / "ledger.jsonl").write_text(
            "".join((d / "holders" / "1" / "ledger.jsonl").read_text().splitlines(keepends=True)[:-1]))),
    ]:
        b = tmp_path / name.replace(" ", "_").replace("'", "")
        shutil.copytree(a, b)
        tamper(b)
        capsys.readouterr()
        assert main(["verify", str(b)]) == 1, name
        err = capsys.readouterr().err
        assert "privacy/end.json" in err and "own ledger" in err, (name, err)
        assert main(["report", str(b)]) == 1, name
