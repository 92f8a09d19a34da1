"""Fault tests: `kill -9` of real `qkcopy train` and `qkcopy index --add` processes at random instants.

Training killed at random points (several seeds) and resumed with `--resume` until it finishes must end with the
same weights, optimizer state and per-step losses, bit for bit, as a run never killed. An index killed inside
`--add` must still open, hold either the old or the new references, and agree with its ids row by row.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from qkcopy.retrieval.descriptors import read_isc_h5
from qkcopy.retrieval.index import ReferenceIndex

TINY = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
        "model.descriptor_dim=16", "data.batch_size=4", "data.workers=0", "data.pca_images=24",
        "schedule.steps_per_phase=4", "schedule.phases=[Q,K]", "schedule.checkpoint_every=1",
        "device=cpu"]  # the default (cpu) preset at tiny sizes, a checkpoint swap after every step
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def qkcopy(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qkcopy", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def kill_after(proc: subprocess.Popen, seconds: float, log: Path | None = None, lines: int = 0) -> bool:
    """SIGKILL `proc` `seconds` after `log` holds `lines` lines (at once when no log is given), unless it ended
    first; True when it was killed."""
    while log is not None and proc.poll() is None and \
            (not log.is_file() or len(log.read_text().splitlines()) < lines):
        time.sleep(0.02)
    try:
        proc.communicate(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True


@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    from testkit import draw_images
    folder = tmp_path_factory.mktemp("train")
    draw_images(folder, 24, size=40, prefix="t")
    return folder


def _state(run: Path) -> tuple[dict, dict, list]:
    latest = run / "checkpoints" / "latest"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return (load_file(latest / "weights.safetensors"), load_file(latest / "optimizer.safetensors"),
            [(r["global_step"], r["loss"], r["loss_pos"], r["loss_neg"]) for r in log])


@pytest.mark.slow
def test_training_killed_at_random_points_resumes_bit_identically(train_images, tmp_path):
    start = time.monotonic()
    finish(qkcopy("train", "--train-images", str(train_images), "--out", str(tmp_path / "straight"), *TINY))
    duration = time.monotonic() - start
    weights, optimizer, losses = _state(tmp_path / "straight")
    assert len(losses) == 8
    kills = 0
    for seed in range(3):
        rng, run = random.Random(seed), tmp_path / f"killed{seed}"
        # killed twice, each time resumed: at a random instant of start-up, PCA or bank pass, then a random
        # moment after a random step was logged (inside a step, its checkpoint swap, or the next bank pass)
        proc = qkcopy("train", "--train-images", str(train_images), "--out", str(run), "--resume", *TINY)
        kills += kill_after(proc, rng.uniform(0.2, 0.6) * duration)
        proc = qkcopy("train", "--train-images", str(train_images), "--out", str(run), "--resume", *TINY)
        kills += kill_after(proc, rng.uniform(0.0, 0.5), run / "train_log.jsonl", rng.randrange(1, 8))
        finish(qkcopy("train", "--train-images", str(train_images), "--out", str(run), "--resume", *TINY))
        w, o, log = _state(run)
        assert w.keys() == weights.keys() and o.keys() == optimizer.keys()
        assert all(np.array_equal(w[k].numpy(), weights[k].numpy()) for k in weights), seed
        assert all(np.array_equal(o[k].numpy(), optimizer[k].numpy()) for k in optimizer), seed
        assert log == losses, seed  # each step logged once, with the same losses
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["K1", "Q1", "init", "latest"]
    assert kills >= 4  # most attempts were really killed mid-run


@pytest.fixture(scope="module")
def descriptors(tiny_run, tiny_benchmark, make_images_module):
    """Reference descriptors (with meta) of the benchmark's 12 references and of 40 more images."""
    root, out = make_images_module
    for name, folder in (("refs", tiny_benchmark / "references"), ("more", root)):
        finish(qkcopy("embed", "--model", str(tiny_run), "--images", str(folder), "--side", "reference", "--out",
                      str(out / name), "--workers", "0", "--device", "cpu"))
    return out


@pytest.fixture(scope="module")
def make_images_module(tmp_path_factory):
    from testkit import draw_images
    root = tmp_path_factory.mktemp("more")
    draw_images(root / "imgs", 40, seed=40, prefix="M")
    return root / "imgs", root


def _check_agrees(idx: Path, known: dict[str, np.ndarray], allowed: list[list[str]]) -> int:
    index = ReferenceIndex.load(idx)  # opens: nothing half-written
    assert index.ids in allowed, index.ids[-3:]
    assert len(index) == len(index.ids)
    stored = index.index.reconstruct_n(0, len(index))  # (N, E): row i is the descriptor of ids[i]
    np.testing.assert_array_equal(stored, np.stack([known[i] for i in index.ids]))
    return len(index)


@pytest.mark.slow
def test_index_add_killed_at_random_points_still_opens_and_agrees_with_its_ids(tiny_run, descriptors, tmp_path):
    refs_ids, refs = read_isc_h5(descriptors / "refs.h5")
    more_ids, more = read_isc_h5(descriptors / "more.h5")
    known = dict(zip(refs_ids + more_ids, [*refs, *more]))
    idx = tmp_path / "idx"
    finish(qkcopy("index", "--model", str(tiny_run), "--descriptors", str(descriptors / "refs.h5"), "--out",
                  str(idx)))
    (idx / "NOTES.md").write_text("kept")
    shutil.copytree(idx, tmp_path / "probe")
    start = time.monotonic()  # how long one uninterrupted --add takes here
    finish(qkcopy("index", "--model", str(tiny_run), "--descriptors", str(descriptors / "more.h5"), "--out",
                  str(tmp_path / "probe"), "--add"))
    duration = time.monotonic() - start
    allowed = [refs_ids, refs_ids + more_ids]
    rng, killed = random.Random(0), 0
    for _ in range(8):  # killed at random instants until one --add gets through
        proc = qkcopy("index", "--model", str(tiny_run), "--descriptors", str(descriptors / "more.h5"), "--out",
                      str(idx), "--add")
        if not kill_after(proc, rng.uniform(0.3, 0.95) * duration):
            assert proc.returncode == 0
            break
        killed += 1
        _check_agrees(idx, known, allowed)
        assert (idx / "NOTES.md").read_text() == "kept"
        if len(ReferenceIndex.load(idx)) == len(refs_ids) + len(more_ids):  # killed after its swap
            break
    else:
        finish(qkcopy("index", "--model", str(tiny_run), "--descriptors", str(descriptors / "more.h5"), "--out",
                      str(idx), "--add"))
    assert _check_agrees(idx, known, allowed[1:]) == 52
    assert killed >= 1


def test_index_killed_between_the_swap_renames_is_read_and_recovered(tiny_run, tiny_benchmark, tmp_path):
    """The one instant a random kill rarely hits: the index moved aside, the new one not yet in place."""
    from qkcopy.cli import main

    idx = tmp_path / "idx"
    assert main(["index", "--model", str(tiny_run), "--references", str(tiny_benchmark / "references"), "--out",
                 str(idx), "--workers", "0", "--device", "cpu"]) == 0
    ids = ReferenceIndex.load(idx).ids
    idx.rename(tmp_path / ".idx.old-4242")
    (tmp_path / ".idx.tmp-xyz").mkdir()  # the new one, half written
    (tmp_path / ".idx.tmp-xyz" / "index.faiss").write_bytes(b"\0" * 7)
    assert ReferenceIndex.load(idx).ids == ids  # a reader finds the previous index, renaming nothing
    assert not idx.exists()
    from testkit import draw_images
    draw_images(tmp_path / "extra", 2, seed=50, prefix="E")
    assert main(["index", "--model", str(tiny_run), "--references", str(tmp_path / "extra"), "--out", str(idx),
                 "--add", "--workers", "0", "--device", "cpu"]) == 0  # the writer puts it back, then adds
    assert ReferenceIndex.load(idx).ids == ids + ["E000", "E001"]
