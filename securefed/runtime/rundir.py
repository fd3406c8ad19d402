"""The run directory contract (shared/DESIGN.md): every file written atomically.

RUN_DIR/config.yaml, metrics.jsonl, summary.json, privacy/ledger.jsonl, report/, checkpoints/, model/,
plus baseline/metrics.jsonl (the centralized baseline's curve) and secagg_transcript/ when asked.
Whole files are written to a temporary sibling and renamed (os.replace is atomic on POSIX), so a crash
never leaves a half-written file; metrics.jsonl is rewritten whole each round for the same reason.
Every JSON file is strict JSON (securefed.jsonio: non-finite numbers as "inf"/"-inf"/"nan").

:func:`check_out_dir` is what `securefed simulate` runs before it imports anything heavy: a reused
``--out`` holding another run, or ``--resume`` with nothing to resume, is refused at once.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any

from securefed import jsonio

__all__ = ["RunDir", "RunDirError", "DirectoryInUse", "WriteError", "hold_exclusive", "atomic_write_bytes", "atomic_write_text",
           "atomic_torch_save", "default_run_dir", "check_out_dir", "is_run_dir", "describe_run", "resume_hint",
           "unreported"]

# files whose presence makes a directory a securefed run (any one of them)
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "privacy/ledger.jsonl", "checkpoints/latest.pt")


class RunDirError(ValueError):
    """``--out`` / ``--resume`` / a report's RUN_DIR does not fit what was asked; the message says what to do."""


class DirectoryInUse(RunDirError):
    """Another process holds this run or state directory (:func:`hold_exclusive`)."""


class WriteError(OSError):
    """A file of a run or state directory could not be written (disk full, read-only, quota, I/O error). The message
    names the file; an atomic write leaves its previous version in place. `securefed server` and `client` stop on it
    with one error (exit 4), never a traceback: an audit filled the disk under each, and both died with torch's
    "basic_ios::clear: iostream error" traceback naming no file."""


def write_error(path: str | Path, e: BaseException, kept: str = "its previous version is kept") -> WriteError:
    """A :class:`WriteError` naming ``path`` and why (``e``: the OSError, or torch's RuntimeError for the same)."""
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:   # torch: "basic_ios::clear: iostream error" and the like, which say only that the write failed
        reason = f"the write failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:120]}"
    err = WriteError(f"cannot write {path} ({reason}): {kept}; free space or make the directory writable")
    err.errno = getattr(e, "errno", None)
    return err


_HELD: dict[str, int] = {}   # lock file -> its open descriptor, held until this process exits


def hold_exclusive(directory: str | Path, what: str) -> None:
    """Hold an exclusive lock on ``directory`` (``.lock`` inside it, fcntl.flock) for the rest of this process.

    One writer per run directory (the coordinator) and per holder state directory: an audit killed `securefed
    simulate --backend grpc`, whose server and holder processes lived on, and `--resume` started a second set on
    the same directories — two processes appended to each holder's ledger and broke its chain. A second process
    now gets DirectoryInUse (the message names the lock and the pid that holds it); the same process may ask again
    (tests and in-process simulations build several roles on one directory). The lock dies with its process."""
    import fcntl

    d = Path(directory)
    lock = d / ".lock"
    try:
        d.mkdir(parents=True, exist_ok=True)
        key = str(lock.resolve())
        if key in _HELD:
            return
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise write_error(lock, e, f"{what} cannot be locked") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DirectoryInUse(f"{what} {d} is in use by another process (pid {holder}, lock {lock}): stop that "
                             "process first — two processes writing one directory's ledgers would corrupt them") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        os.close(fd)
        raise write_error(lock, e, f"{what} cannot be locked") from None
    _HELD[key] = fd


def in_use_by(directory: str | Path) -> str | None:
    """The pid (as its .lock says) of another process holding ``directory``'s lock (:func:`hold_exclusive`), or None
    when no other process holds it. Only probes: the lock is released at once."""
    import fcntl

    lock = Path(directory) / ".lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        if str(lock.resolve()) in _HELD:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
    except OSError:
        return None
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (WriteError naming it; the previous version stays)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # lazily: network holder processes use this module without paying for torch

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:   # torch reports a failed write (ENOSPC, EFBIG, EIO) as a RuntimeError of its stream
            if not _failed_write(e):
                raise              # any other RuntimeError is a bug, not a disk to free: never said to be one
            raise write_error(path, e) from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def _failed_write(e: RuntimeError) -> bool:
    """torch.save's own words for a write the file system refused: its iostream ("basic_ios::clear: iostream error",
    a full tmpfs) or its zip writer ("PytorchStreamWriter failed writing file …"; "[enforce fail at
    inline_container.cc:…] . unexpected pos …" under a file-size limit, measured on torch 2.13)."""
    text = str(e)
    return any(w in text for w in ("iostream", "PytorchStreamWriter", "inline_container", "write failed"))


def default_run_dir(root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"run-{stamp}"


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths of the contract
    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    privacy = property(lambda self: self.root / "privacy")
    report = property(lambda self: self.root / "report")
    checkpoints = property(lambda self: self.root / "checkpoints")
    model = property(lambda self: self.root / "model")
    baseline = property(lambda self: self.root / "baseline")
    transcript = property(lambda self: self.root / "secagg_transcript")

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoints / "latest.pt"

    def create(self, *, resume: bool) -> None:
        if self.root.exists() and any(self.root.iterdir()) and not resume:
            if self.checkpoint_file.exists() and _finished(self.root, False):   # --resume would refuse it too
                raise FileExistsError(f"{self.root} holds a finished run: choose another --out (`securefed report` and "
                                      "`securefed verify` read it)")
            if self.checkpoint_file.exists() and unreported(self.root):
                raise FileExistsError(f"{self.root} holds a run that finished its rounds but has no report: pass "
                                      "--resume to write it, or choose another --out")
            if self.checkpoint_file.exists():
                raise FileExistsError(f"{self.root} holds an earlier run: pass --resume to continue it, or choose another --out")
            raise FileExistsError(f"{self.root} exists and is not empty: choose another --out")
        for d in (self.root, self.privacy, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, jsonio.dumps(obj, indent=2) + "\n")

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        atomic_write_text(path, "".join(jsonio.dumps(r) + "\n" for r in rows))

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        """Strict: a corrupt line is a jsonio.JSONFileError naming the file and line, never skipped."""
        return jsonio.read_jsonl(path)


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding at least one file of the run-directory contract."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in RUN_MARKERS)


def describe_run(path: str | Path) -> str:
    """"preset demo" / "preset demo with changes to a, b" / "config.yaml unreadable: …": what a user
    needs to recognise an existing run directory."""
    import yaml

    from securefed.configio import parse_yaml
    from securefed.runtime.config import closest_preset

    cfg = Path(path) / "config.yaml"
    if not cfg.is_file():
        return "no config.yaml"
    try:
        data = parse_yaml(cfg.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return f"config.yaml unreadable: {type(e).__name__}"
    if not isinstance(data, dict):
        return "config.yaml is not a mapping"
    name, diff = closest_preset(data)
    if not diff:
        return f"preset {name}"
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    return f"preset {name} with changes to {', '.join(diff[:4])}{more}"


def resume_hint(out: str | Path, how: str, *, runs_baseline: bool = False) -> str:
    """What to do after an interrupted run in ``out`` (Ctrl-C, SIGTERM), as check_out_dir will judge a --resume of it
    (``runs_baseline`` as there): continue it from its checkpoint; write the report of a run stopped after its
    summary.json (--resume does only that); nothing, for a run that is complete; before the first checkpoint there is
    nothing to resume, and ``out`` holds a started run. (A crash review: stopped between summary.json and the report,
    the hint said --resume, which refused the run as finished, and its report was never written.)"""
    if _finished(Path(out), runs_baseline):
        return f"the run in {out} is complete: `securefed report {out}` and `securefed verify {out}` read it"
    if unreported(out, runs_baseline=runs_baseline):
        return f"the run in {out} finished its rounds: its report is written {how} (or by `securefed report {out}`)"
    if RunDir(out).checkpoint_file.is_file():
        return f"the run in {out} continues from its last checkpoint {how}"
    return f"no checkpoint was written yet: start again with a new --out (or remove {out})"


def unreported(root: str | Path, *, runs_baseline: bool = False) -> bool:
    """The run in ``root`` finished its rounds — its summary.json is written, with the baseline's result where this
    command runs one — but its report is not: stopped after summary.json (written after the export and the signed
    end-of-run record) and before report/ was renamed into place, or the report could not be written. A --resume
    writes the report and nothing else (Simulation, `securefed server`)."""
    return _summary_done(Path(root), runs_baseline) and not _reported(Path(root))


def _reported(root: Path) -> bool:
    """report/ is the one the run wrote: it is renamed into place whole (render_report), report.json with it."""
    return (RunDir(root).report / "report.json").is_file()


def _finished(root: Path, runs_baseline: bool) -> bool:
    """The run in ``root`` is over: its summary is done (:func:`_summary_done`) and its report written. A run stopped
    between the two is not (:func:`unreported`: --resume writes the report)."""
    return _summary_done(root, runs_baseline) and _reported(root)


def _over(root: Path, runs_baseline: bool) -> bool:
    """Finished under this command's settings, or under the run's own: its report — the last step, after the
    baseline its own config ran — is written over a summary.json. (A newcomer's walkthrough: `--resume` of a finished
    run without its `--set baseline=false` was told "made with other settings; resume it with that run's settings",
    and then "holds a finished run".)"""
    return _finished(root, runs_baseline) or (_reported(root) and RunDir(root).summary.is_file())


def _summary_done(root: Path, runs_baseline: bool) -> bool:
    """The run in ``root`` finished its rounds: its summary.json (written after the export and the signed end-of-run
    record) is there and, where this command runs a centralized baseline after the rounds, holds the baseline's
    result (a run stopped during its baseline resumes to finish it)."""
    rd = RunDir(root)
    p = rd.summary
    if not p.is_file():
        return False
    if not runs_baseline:
        return True
    try:
        summary = jsonio.read_json(p, legacy=True)
        rows = rd.metrics.read_text().strip() if rd.metrics.is_file() else ""
    except (OSError, UnicodeDecodeError, jsonio.JSONFileError):
        return False      # a damaged summary: the resume rewrites it
    # the baseline runs only after rounds (Simulation._finish: none for a run that ended before its first round)
    return isinstance(summary, dict) and ("central_eval_ppl" in summary or not rows)


def check_out_dir(out: str | Path, *, resume: bool, resolved: dict | None = None, runs_baseline: bool = False) -> None:
    """Refuse, before any work, an ``--out`` that cannot take this run (RunDirError, one message).

    New run: ``out`` must not exist, or be an empty directory. ``--resume``: ``out`` must hold a
    checkpoint and not be finished (``runs_baseline``: this command runs a centralized baseline after the rounds, so
    a run without its result is not; a run stopped after its summary.json but before its report is not either: the
    resume writes the report), and (when ``resolved``, this run's config mapping, is given) the run's
    config.yaml must match it — resuming under other settings would mix two runs in one ledger — except in
    ``config.RESUME_MAY_CHANGE`` (deadlines and streaming), which the resumed coordinator records.
    """
    from securefed.outdir import uncreatable

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--out {root} is a file, not a directory; choose a new --out")
    why = uncreatable(root)
    if why and not resume:   # (--resume of an absent directory: "nothing to resume", below)
        raise RunDirError(f"--out {root} cannot be created: {why}; choose another --out")
    if not resume:
        if root.is_dir() and any(root.iterdir()):
            if is_run_dir(root) and _over(root, runs_baseline):   # a walkthrough followed the hint: --resume refused it
                raise RunDirError(f"{root} holds a finished run ({describe_run(root)}); choose a new --out (`securefed "
                                  f"report {root}` and `securefed verify {root}` read it)")
            if is_run_dir(root) and unreported(root, runs_baseline=runs_baseline):
                raise RunDirError(f"{root} holds a run that finished its rounds but has no report "
                                  f"({describe_run(root)}); choose a new --out, or --resume to write its report")
            if is_run_dir(root) and not RunDir(root).checkpoint_file.is_file():
                # a newcomer's walkthrough: Ctrl-C before the first checkpoint, the same command again was sent to
                # --resume, which refused it ("no checkpoint"): the advice went round in a circle. A run still going
                # before its first checkpoint is not "stopped": never advise removing a live run's directory
                pid = in_use_by(root)
                if pid is not None:
                    raise RunDirError(f"{root} holds a run in progress ({describe_run(root)}; process {pid}); let it "
                                      "finish or stop it, or choose a new --out")
                raise RunDirError(f"{root} holds another run ({describe_run(root)}) that stopped before its first "
                                  f"checkpoint, so there is nothing to resume; choose a new --out, or remove {root} to "
                                  "start again there")
            if is_run_dir(root):
                raise RunDirError(f"{root} holds another run ({describe_run(root)}); choose a new --out, or --resume "
                                  "to continue it")
            raise RunDirError(f"{root} exists and is not empty (and holds no securefed run); choose a new --out")
        return
    if not root.is_dir():
        raise RunDirError(f"--resume: {root} does not exist, so there is nothing to resume; drop --resume to start a run there")
    ckpt = RunDir(root).checkpoint_file
    if not ckpt.is_file():
        what = f"holds a run ({describe_run(root)}) but" if is_run_dir(root) else "is not a securefed run and"
        raise RunDirError(f"--resume: {root} {what} has no checkpoint ({ckpt}); nothing to resume: choose a new --out")
    if _over(root, runs_baseline):
        raise RunDirError(f"--resume: {root} holds a finished run ({describe_run(root)}): nothing to resume (resuming "
                          f"would redo its export and overwrite its summary); `securefed report {root}` and `securefed "
                          f"verify {root}` read it; choose a new --out for another run")
    if resolved is None:
        return
    import yaml

    from securefed.configio import parse_yaml
    from securefed.runtime.config import RESUME_MAY_CHANGE, config_differences

    try:
        old = parse_yaml(RunDir(root).config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunDirError(f"--resume: {root}/config.yaml cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'}); the run cannot be checked against "
                          "this config") from None
    if not isinstance(old, dict):   # fail closed: a run whose settings cannot be read is never resumed as if it matched
        raise RunDirError(f"--resume: {root}/config.yaml does not hold a mapping (got {type(old).__name__}); the run "
                          "cannot be checked against this config")
    diff = [d for d in config_differences(old, resolved)
            if d[0] not in RESUME_MAY_CHANGE]   # deadlines and streaming: the coordinator records the change
    if diff:
        first = ("model", "privacy", "aggregation", "federation", "data", "train", "outer")  # what matters most first
        diff.sort(key=lambda d: (first.index(d[0].split(".")[0]) if d[0].split(".")[0] in first else len(first), d[0]))
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:5])
        shown = f"{len(diff)} settings differ: {shown}" + (" ..." if len(diff) > 5 else "")
        raise RunDirError(f"--resume: {root} holds a run ({describe_run(root)}) made with other settings; resume it with "
                          f"that run's settings ({shown}), or choose a new --out")


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file read in 1 MiB blocks, or None if it does not exist: the exported model's hash in
    summary.json and the signed end-of-run record (protocols/dp.md §7.4), and what `verify` checks it against."""
    import hashlib

    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
