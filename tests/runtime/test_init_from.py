"""model.init_from: a run whose θ0 is a saved model (a public checkpoint) instead of the seed's random init
(protocols/dp.md §13)."""

import json

import pytest
import torch

from securefed.cli import main
from securefed.training.flat import get_flat
from securefed.training.models import build_model, load_initial_weights


def _sets(tiny_run, *more):
    return [x for t in [*tiny_run, *more] for x in ("--set", t)]


def test_the_saved_weights_are_loaded_exactly_and_another_shape_is_refused(tmp_path):
    src = build_model("tiny", vocab_size=300, seq_len=32, seed=7)
    src.save_pretrained(tmp_path / "m", safe_serialization=True)
    fresh = build_model("tiny", vocab_size=300, seq_len=32, seed=8)
    assert not torch.equal(get_flat(fresh), get_flat(src))
    got = build_model("tiny", vocab_size=300, seq_len=32, seed=8, init_from=str(tmp_path / "m"))
    assert torch.equal(get_flat(got), get_flat(src))                 # every tensor, bit for bit
    assert got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()   # still tied
    other = build_model("tiny", vocab_size=301, seq_len=32, seed=8)   # another vocabulary: the embedding differs
    before = get_flat(other).clone()
    with pytest.raises(ValueError, match=r"model.embed_tokens.weight has shape \(300, .*needs \(301, "):
        load_initial_weights(other, str(tmp_path / "m"), preset="tiny")
    assert torch.equal(get_flat(other), before)                       # nothing loaded
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    for name, change in (("untied", lambda d: d.__setitem__("lm_head.weight", d["model.embed_tokens.weight"] + 1)),
                         ("nan", lambda d: d["model.norm.weight"].__setitem__(0, float("nan")))):
        d = {k: v.clone() for k, v in sd.items()}
        change(d)
        (tmp_path / name).mkdir()
        save_file(d, str(tmp_path / name / "model.safetensors"))
        with pytest.raises(ValueError, match="ties it to the input embeddings" if name == "untied" else "not finite"):
            load_initial_weights(fresh, str(tmp_path / name), preset="tiny")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_initial_weights(other, str(tmp_path / "bad"), preset="tiny")


def test_a_run_started_from_another_runs_model(tmp_path, tiny_run, capsys):
    """θ0 of the second run is the first run's exported model: the same SHA-256 of the flat weights the first run
    ended with, the same start perplexity on the same held-out rows as the first run's final one; the summary and
    the report name the checkpoint. The baseline starts there too: at an lr of 1e-12 it ends where it began, at the
    first run's final perplexity."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["simulate", "--out", str(a), *_sets(tiny_run, "federation.rounds=1")]) == 0
    sa = json.loads((a / "summary.json").read_text())
    assert sa["init_from"] is None
    assert main(["simulate", "--out", str(b), *_sets(tiny_run, "federation.rounds=1", f"model.init_from={a / 'model'}",
                                                     "baseline=true", "baseline_lr=1e-12")]) == 0
    sb = json.loads((b / "summary.json").read_text())
    theta_a = get_flat(build_model("tiny", vocab_size=512, seq_len=32, seed=0, init_from=str(a / "model")))
    from securefed.federation.holder import model_sha256

    assert sb["init_sha256"] == model_sha256(theta_a.numpy().astype("<f4").tobytes()) != sa["init_sha256"]
    assert sb["init_from"] == str(a / "model")
    assert sb["start_eval_ppl"] == pytest.approx(sa["fed_eval_ppl"], rel=1e-6)
    assert sb["start_eval_ppl"] < sa["start_eval_ppl"]
    assert sb["central_eval_ppl"] == pytest.approx(sa["fed_eval_ppl"], rel=1e-4)   # not from random weights (512)
    capsys.readouterr()
    assert main(["report", str(b)]) == 0
    html = (b / "report" / "report.html").read_text()
    assert "initial weights" in html and str(a / "model") in html and "must be public" in html


def test_a_checkpoint_saved_with_another_tokenizer_is_refused(tmp_path, tiny_run, capsys):
    a = tmp_path / "a"
    assert main(["simulate", "--out", str(a), *_sets(tiny_run, "federation.rounds=1")]) == 0
    capsys.readouterr()
    rc = main(["simulate", "--out", str(tmp_path / "b"),
               *_sets(tiny_run, "federation.rounds=1", "data.vocab_size=400", f"model.init_from={a / 'model'}")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "model.init_from" in err and "was saved with another tokenizer" in err
    assert not (tmp_path / "b").exists()           # refused before the run directory is made


def test_a_checkpoint_without_its_tokenizer_is_loaded_with_a_warning_that_it_could_not_be_checked(tmp_path, caplog):
    from securefed.training.data.tokenizer import check_saved_tokenizer

    build_model("tiny", vocab_size=300, seq_len=32, seed=7).save_pretrained(tmp_path / "m", safe_serialization=True)
    with caplog.at_level("WARNING", logger="securefed.training.data.tokenizer"):
        check_saved_tokenizer(tmp_path / "m", "0" * 64)
    assert "holds no tokenizer.json" in caplog.text and "cannot be checked" in caplog.text
