"""A training run's directory from start to resume: fresh start, retry, recovery after a kill, --resume checks.

A directory that holds only these files and no checkpoint but checkpoints/init (a start that failed or was
killed before its first checkpoint) is started over, with or without --resume, and --resume of a missing or empty directory
starts the run: a retry is never blocked. A failed start in a new directory removes what it wrote.

Checkpoints survive a kill at any instant. A phase's end writes its tag (Q1) first and `latest` last, so
`latest` never says a phase is done before its tag exists; each is swapped in by rename (`io.atomic_dir`), and
on start every checkpoint folder's swap is undone or finished (`recover_checkpoints`). A resume that finds a
tag but no `latest` (killed between the two) restores `latest` from it (`restore_latest`); one that finds a
phase done but its tag missing rebuilds the tag from `latest` (`Run.repair`); `training.loop.train` writes a
missing evaluation row of a done phase before going on. A phase checkpoint is never removed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from qkcopy import checkpoint as ckpt
from qkcopy.config import TrainConfig, differing_keys, load_config, segment_names, to_dict
from qkcopy.errors import ConfigError, NothingToResume, RunDirError, RunDirExists
from qkcopy.io import atomic_dir, atomic_write

log = logging.getLogger(__name__)

RUN_ENTRIES = frozenset({"config.yaml", "provenance.json", "gist_pca.safetensors", "train_log.jsonl",
                         "evaluations.jsonl", "banks", "checkpoints", "tensorboard"})  # what a run writes


def unstarted_run(run_dir: Path) -> bool:
    """A run's own files and nothing else, but no checkpoint to resume: a start that failed or was killed."""
    if not run_dir.is_dir() or (run_dir / "checkpoints" / "latest").exists():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if not names or not names <= RUN_ENTRIES or not names & {"config.yaml", "provenance.json"}:
        return False
    ckpts = run_dir / "checkpoints"  # only the head-init checkpoint (redone on a restart) may be there
    return not ckpts.is_dir() or all(p.name == "init" or p.name.startswith(".") for p in ckpts.iterdir())


def restore_latest(run_dir: Path, cfg: TrainConfig) -> bool:
    """`latest` from the newest phase tag when a kill came between a first tag and its `latest` (a phase's end
    writes its tag first): the tag holds the phase's final weights and method state, and the next phase
    starts with a new optimizer, so resuming from it is exact. True when `latest` was restored."""
    ckpts = run_dir / "checkpoints"
    if (ckpts / "latest").exists() or not ckpts.is_dir():
        return False
    for name in reversed(segment_names(cfg)):
        try:
            state = ckpt.read_state(ckpts / name)
        except (ckpt.CheckpointError, OSError, ValueError):
            continue
        if state.get("phase_done") and isinstance(state.get("phase"), int):
            with atomic_dir(ckpts / "latest") as tmp:
                shutil.copy2(ckpts / name / "weights.safetensors", tmp / "weights.safetensors")
                shutil.copy2(ckpts / name / "state.json", tmp / "state.json")
            log.warning("%s had no `latest`: restored from the phase checkpoint %s", run_dir, name)
            return True
    return False


def recover_checkpoints(run_dir: Path) -> None:
    """Undo or finish every checkpoint folder's interrupted swap (`latest`, `init` and the phase tags)."""
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return
    names = {p.name for p in ckpts.iterdir() if not p.name.startswith(".")}
    for leftover in ckpts.glob(".*"):  # .NAME.tmp-XXXX or .NAME.old-PID
        for marker in (".tmp-", ".old-"):
            if marker in leftover.name:
                names.add(leftover.name[1:leftover.name.rindex(marker)])
    for name in sorted(names):
        ckpt.recover(ckpts / name)


def clear_run(run_dir: Path) -> None:
    """Remove what a run wrote in `run_dir` (only its own entries)."""
    for name in RUN_ENTRIES:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def prepare_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> bool:
    """Check `run_dir` can be used as asked (rank 0); True when this is a fresh start in it."""
    latest = run_dir / "checkpoints" / "latest"
    recover_checkpoints(run_dir)  # a kill inside a checkpoint swap: the previous checkpoint back, no leftovers
    if resume:
        restore_latest(run_dir, cfg)
    if unstarted_run(run_dir):
        log.warning("%s holds a run that never reached its first checkpoint: starting it over", run_dir)
        clear_run(run_dir)
        return True
    if resume:
        if not latest.exists():
            if run_dir.exists() and any(run_dir.iterdir()):
                raise NothingToResume(f"nothing to resume in {run_dir}: no checkpoints/latest, and it holds files "
                                      "that are not a qkcopy run's; choose another --out", run_dir)
            log.warning("nothing to resume in %s yet: starting the run", run_dir)  # a job that always resumes
            return True
        saved = load_config(run_dir / "config.yaml")
        keys = differing_keys(saved, cfg)
        if keys:
            old, new = to_dict(saved), to_dict(cfg)
            shown = "; ".join(f"{k}: {_get(old, k)!r} in the run, {_get(new, k)!r} given" for k in keys[:5])
            raise ConfigError(f"--resume with a config that differs from {run_dir / 'config.yaml'} in "
                              f"{', '.join(keys)} ({shown}); resume with the same settings, or start a new run "
                              "with another --out", keys[0])
        return False
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirExists(f"run directory {run_dir} is not empty; pass --resume to continue it or choose a new "
                           "--out", run_dir)
    return True


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def trim_jsonl(path: Path, keep) -> None:
    """Rewrite a JSON-lines log keeping the rows `keep(row)` accepts; a torn last line (a kill) is dropped."""
    if not path.is_file():
        return
    rows, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise RunDirError(f"{path}:{i + 1} is not a JSON line; repair or remove the file", path) from None
    kept = [r for r in rows if keep(r)]
    if len(kept) != len(lines):
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
