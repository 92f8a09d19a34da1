"""Training with `mining=bounded` is training with the full pass: same losses and weights, Q and K phases."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qkcopy.config import load_config
from qkcopy.training.loop import train

TINY = ["model.weights=null", "model.image_size=32", "model.hidden=32", "model.descriptor_dim=16",
        "data.batch_size=4", "data.workers=0", "data.pca_images=24", "schedule.steps_per_phase=4",
        "schedule.phases=[Q,K]", "schedule.checkpoint_every=100", "device=cpu", "model.head_init=random",
        "model.feature_norm=false", "loss.negatives_per_positive=2", "optim.lr=1.0e-3"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from testkit import draw_images
    return draw_images(tmp_path_factory.mktemp("mining"), 40, size=40, prefix="m")


def _log(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.parametrize("full_freeze", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bounded_mining_trains_exactly_like_the_full_pass(images, tmp_path, full_freeze):
    extra = [f"schedule.full_freeze={str(full_freeze).lower()}"]
    train(load_config("cpu", TINY + extra + ["mining=full"]), images, tmp_path / "full")
    train(load_config("cpu", TINY + extra + ["mining=bounded"]), images, tmp_path / "bounded")
    full, bounded = _log(tmp_path / "full", "train_log.jsonl"), _log(tmp_path / "bounded", "train_log.jsonl")
    assert [r["segment"] for r in bounded] == ["Q1"] * 4 + ["K1"] * 4
    for key in ("loss", "loss_pos", "loss_neg", "d2_neg_min", "d2_neg_max"):
        assert [r[key] for r in bounded] == [r[key] for r in full], key
    want, got = (load_file(tmp_path / d / "checkpoints" / "latest" / "weights.safetensors")
                 for d in ("full", "bounded"))
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    mining = _log(tmp_path / "bounded", "mining_log.jsonl")
    assert len(mining) == 8 and mining[0]["full"] and mining[4]["full"]  # each phase starts with a full pass
    assert all(m["rows"] == 40 for m in mining)
    assert any(not m["full"] and m["evaluated"] < m["rows"] for m in mining)
    assert not (tmp_path / "full" / "mining_log.jsonl").exists()
