"""load_trained: a run directory or one of its checkpoints; the fingerprint follows the exact weights."""

import shutil

import pytest
import torch

from qkcopy.checkpoint import save_checkpoint
from qkcopy.model.trained import load_trained


def test_run_dir_and_checkpoint_dir_load_the_same_models(tiny_run):
    by_run = load_trained(tiny_run)
    by_ckpt = load_trained(tiny_run / "checkpoints" / "latest")
    assert by_run.fingerprint == by_ckpt.fingerprint and len(by_run.fingerprint) == 16
    assert by_run.checkpoint == tiny_run / "checkpoints" / "latest"
    assert not by_run.q.training and not by_run.k.training
    for a, b in zip(by_run.q.state_dict().values(), by_ckpt.q.state_dict().values()):
        assert torch.equal(a, b)


def test_fingerprint_changes_with_any_weight(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = load_trained(run)
    fingerprint = before.fingerprint
    models = {"q": before.q, "k": before.k}
    with torch.no_grad():
        before.k.head.ffn[2].bias[0] += 1e-3
    save_checkpoint(run / "checkpoints" / "other", models, dict(phase=0))
    after = load_trained(run / "checkpoints" / "other")
    assert after.fingerprint != fingerprint and after.fingerprint == before.fingerprint  # of the live weights
    assert load_trained(run).fingerprint == fingerprint  # latest untouched


def test_not_a_run_is_named(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="not a qkcopy run directory"):
        load_trained(tmp_path)


def test_test_size_changes_the_input_and_the_fingerprint(tiny_run):
    from qkcopy.model.trained import load_trained

    base = load_trained(tiny_run)
    assert base.cfg.model.input_size == base.cfg.model.image_size
    same = load_trained(tiny_run, test_size=base.cfg.model.image_size)
    assert same.fingerprint == base.fingerprint  # the training size given explicitly: nothing changes
    bigger = load_trained(tiny_run, test_size=base.cfg.model.image_size + 32)
    assert bigger.cfg.model.input_size == base.cfg.model.image_size + 32 and bigger.fingerprint != base.fingerprint
    with pytest.raises(ValueError, match="test_size must be at least 32"):
        load_trained(tiny_run, test_size=8)
