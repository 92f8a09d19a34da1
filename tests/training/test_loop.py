"""The training loop on a tiny run: resume equality, frozen BatchNorm, divergence handling, config."""

import pytest
import torch
from safetensors.torch import load_file

from qkcopy.config import load_config
from qkcopy.model.descriptor import build_qk_models
from qkcopy.training.loop import TrainingDiverged, train

# the shipped presets' settings at tiny sizes: nothing about the data, loss or head start is overridden
TINY = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
        "model.descriptor_dim=16", "data.batch_size=4", "data.workers=0", "data.pca_images=24",
        "schedule.steps_per_phase=3", "schedule.phases=[Q,K]", "schedule.checkpoint_every=100", "device=cpu"]
PRESETS = ["cpu", "cpu-long", "demo", "paper"]
METHODS = ["qk", "simclr", "moco"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from testkit import draw_images
    return draw_images(tmp_path_factory.mktemp("train"), 24, size=40, prefix="t")


def _weights(run_dir):
    return load_file(run_dir / "checkpoints" / "latest" / "weights.safetensors")


def _losses(run_dir):
    import json
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", PRESETS)
def test_resume_continues_exactly(images, tmp_path, preset, method):
    cfg = load_config(preset, TINY + [f"method={method}"])
    train(cfg, images, tmp_path / "straight")
    train(cfg, images, tmp_path / "stopped", stop_after_steps=2)  # inside Q1
    train(cfg, images, tmp_path / "stopped", resume=True, stop_after_steps=4)  # inside K1, after a bank switch
    train(cfg, images, tmp_path / "stopped", resume=True)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
    assert _losses(tmp_path / "stopped") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-6)
    assert len(_losses(tmp_path / "straight")) == 6


def test_training_changes_weights_but_not_batchnorm(images, tmp_path):
    cfg = load_config("cpu", TINY)
    train(cfg, images, tmp_path / "run")
    after = _weights(tmp_path / "run")
    q0, k0 = build_qk_models(cfg.model, cfg.seed)
    before = {f"q.{k}": v for k, v in q0.state_dict().items()} | {f"k.{k}": v for k, v in k0.state_dict().items()}
    bn = [k for k in before if ".bn" in k]
    assert bn and all(torch.equal(after[k], before[k]) for k in bn)  # stats and affine params untouched
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    assert any(k.startswith("q.backbone") for k in changed) and any(k.startswith("k.backbone") for k in changed)
    assert any(k.startswith("q.head") for k in changed) and any(k.startswith("k.head") for k in changed)


def test_pca_head_init_starts_both_heads_alike_and_is_saved(images, tmp_path):
    cfg = load_config("cpu", TINY + ["schedule.phases=[Q]"])
    assert cfg.model.head_init == "pca"
    train(cfg, images, tmp_path / "run")
    init = load_file(tmp_path / "run" / "checkpoints" / "init" / "weights.safetensors")
    q0, _ = build_qk_models(cfg.model, cfg.seed)
    for name in q0.head.state_dict():
        assert torch.equal(init[f"q.head.{name}"], init[f"k.head.{name}"]), name
    assert not torch.equal(init["q.head.ffn.2.weight"], q0.head.state_dict()["ffn.2.weight"])
    assert not torch.equal(_weights(tmp_path / "run")["q.head.ffn.0.weight"], init["q.head.ffn.0.weight"])


def test_full_freeze_leaves_the_frozen_head_alone(images, tmp_path):
    cfg = load_config("cpu", TINY + ["schedule.phases=[Q]", "schedule.full_freeze=true"])
    train(cfg, images, tmp_path / "run")
    after = _weights(tmp_path / "run")
    start = load_file(tmp_path / "run" / "checkpoints" / "init" / "weights.safetensors")  # the PCA head start
    k = [name for name in start if name.startswith("k.")]
    assert k and all(torch.equal(after[name], start[name]) for name in k)
    assert not all(torch.equal(after[name], start[name]) for name in start if name.startswith("q.head"))


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(images, tmp_path):
    import yaml

    from qkcopy.config import to_dict

    good = load_config("cpu", TINY)
    train(good, images, tmp_path / "run", stop_after_steps=3)  # Q1 done and checkpointed
    before = _weights(tmp_path / "run")
    bad = load_config("cpu", TINY + ["optim.lr=1.0e+30"])  # the same run continued with an absurd lr
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(to_dict(bad), sort_keys=False))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(bad, images, tmp_path / "run", resume=True)
    after = _weights(tmp_path / "run")
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # latest is still the good Q1 checkpoint
    assert all(torch.isfinite(v).all() for v in after.values())


def test_new_run_refuses_a_used_directory(images, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config("cpu", TINY), images, tmp_path / "run")




@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_torchrun_two_ranks_trains_like_one_process(images, tmp_path, preset):
    """torchrun with gloo, bank sharded over 2 ranks, against one process: the same negatives at every step
    (the certified choice, `qk.certify`), the same first-step gradient norm and losses to float tolerance (the
    two layouts run the backbone over batches of 2 and 4, so queries differ in their last bits). Post-Adam
    weights are not compared: Adam moves by ±lr·sign(g) wherever g is within rounding of zero."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(images[0]).parent
    base = ["--train-images", str(folder), "--config", preset, *TINY, "schedule.steps_per_phase=2"]
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "qkcopy", "train", "--out", str(tmp_path / "one"), *base],
                   check=True, env=env, timeout=600)
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "qkcopy", "train",
                    "--out", str(tmp_path / "two"), *base], check=True, env=env, timeout=600)
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["world_size"] == 2
    one, two = (_log(tmp_path / name) for name in ("one", "two"))
    assert len(one) == len(two) == 4
    assert [r["negatives"] for r in two] == [r["negatives"] for r in one]
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)


def _log(run_dir):
    import json
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
