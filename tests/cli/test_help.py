"""Every command and option of corpus, keygen, report, audit and the top-level parser explains itself
(simulate, server and client are checked with their own rewrite)."""

import argparse

import pytest

from securefed.cli import build_parser, main

OWNED = ("corpus", "keygen", "report", "audit")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _undocumented(parser, where, recurse=True):
    bad = [] if (parser.description or "").strip() else [f"{where}: no description"]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        if not (a.help or "").strip() or a.help == argparse.SUPPRESS:
            bad.append(f"{where}: {'/'.join(a.option_strings) or a.dest} has no help")
    for name, sub in _subparsers(parser) if recurse else ():
        bad += _undocumented(sub, f"{where} {name}")
    return bad


def test_owned_commands_and_options_have_help():
    top = build_parser()
    assert _undocumented(top, "securefed", recurse=False) == []
    subs = dict(_subparsers(top))
    bad = [b for name in OWNED for b in _undocumented(subs[name], f"securefed {name}")]
    assert bad == []


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in OWNED], ["corpus", "build", "--help"]])
def test_help_prints_and_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage: securefed" in capsys.readouterr().out


def test_top_level_help_lists_examples_and_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "exit status:" in out and "securefed report runs/dp" in out


@pytest.mark.parametrize("command", ["simulate", "server", "client", "verify", "report", "keygen", "corpus", "audit"])
def test_every_command_help_states_its_exit_status(command, capsys):
    """The top-level help says 'other codes per command (see its --help)', but simulate, server, client and verify
    listed none (server: 0-5, client: 0-8, verify: 0-3, in module docstrings only), and report's said exit 1 meant
    a broken hash chain, while an unfinished run (no signed end record) exits 1 too."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status" in out.lower()
    codes = {"server": "4 checkpoint and privacy ledger disagree", "client": "9 another process takes part with this holder's identity key",
             "verify": "3 consistent, but unsigned", "simulate": "6 --backend ray",
             "report": "or no signed end-of-run record (an unfinished run)"}
    assert codes.get(command, "") in out
