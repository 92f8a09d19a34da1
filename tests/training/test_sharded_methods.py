"""SimCLR- and MoCo-style under torchrun: 2 gloo ranks, negatives all-gathered, train like one process; and
QK with gradient caching on 2 ranks (its plain sharded run: tests/training/test_loop.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# tests/training/test_loop.py's tiny sizes of the shipped presets' settings
TINY = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
        "model.descriptor_dim=16", "data.batch_size=4", "data.workers=0", "data.pca_images=24",
        "schedule.steps_per_phase=2", "schedule.phases=[Q,K]", "schedule.checkpoint_every=100", "device=cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from testkit import draw_images
    return draw_images(tmp_path_factory.mktemp("train"), 24, size=40, prefix="t")


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method, chunk", [("simclr", 0), ("moco", 0), ("simclr", 1), ("qk", 1)])
def test_torchrun_two_ranks_trains_like_one_process(images, tmp_path, method, chunk):
    """One process encodes the batch of 4 at once; 2 ranks encode 2 items each (in sub-batches of `chunk`
    with gradient caching) and all-gather the descriptors. The same per-step losses and first-step gradient
    norm, to float tolerance (the backbone runs over batches of 4, 2 or 1, so descriptors differ in their last
    bits); the MoCo queue, filled from the gathered keys, carries the agreement across steps."""
    folder = Path(images[0]).parent
    base = ["--train-images", str(folder), "--config", "cpu", "--method", method, *TINY]
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "qkcopy", "train", "--out", str(tmp_path / "one"), *base],
                   check=True, env=env, timeout=600)
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "qkcopy", "train",
                    "--out", str(tmp_path / "two"), *base, f"data.grad_cache_chunk={chunk}"],
                   check=True, env=env, timeout=600)
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["world_size"] == 2
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["d2_neg_mean"] for r in two] == pytest.approx([r["d2_neg_mean"] for r in one], rel=1e-4)
    if method == "qk":  # the certified choice of bank negatives (qk.certify): the same pairs at every step
        assert [r["negatives"] for r in two] == [r["negatives"] for r in one]
