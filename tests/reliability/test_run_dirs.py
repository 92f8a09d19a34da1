"""Issue 10, rows 4 and 5 (and the train log of row 6): run folders never become a dead end, config values are
checked before any work, a resume names the key that differs, and a resumed log does not repeat steps."""

import functools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from testkit import refused as cli_refused

from qkcopy.config import load_config
from qkcopy.errors import ConfigError, DataError, NothingToResume, RunDirExists
from qkcopy.training.loop import train
from qkcopy.training.run import Run

refused = functools.partial(cli_refused, extra=[])  # train takes no --workers/--device

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.weights=null", "model.image_size=32", "model.hidden=32", "model.descriptor_dim=16",
        "data.batch_size=4", "data.workers=0", "data.pca_images=24", "schedule.steps_per_phase=3",
        "schedule.phases=[Q,K]", "schedule.checkpoint_every=100", "device=cpu",
        "model.head_init=random", "model.feature_norm=false"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from testkit import draw_images
    return draw_images(tmp_path_factory.mktemp("train"), 24, size=40, prefix="t")


def test_a_failed_start_leaves_nothing_and_says_training_images(images, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for p in images[:10]:
        shutil.copy(p, few)
    run = tmp_path / "run"
    refused(["train", "--train-images", str(few), "--out", str(run), *TINY], capsys,
            "needs at least 16 training images, got 10")
    assert not run.exists()  # nothing to block a retry
    cfg = load_config("cpu", TINY)
    with pytest.raises(DataError, match="needs at least 16 training images"):
        Run.open(cfg, sorted(few.iterdir()), run, resume=False)
    run.mkdir()  # a folder the user made: kept, but emptied of what the failed start wrote
    with pytest.raises(DataError):
        Run.open(cfg, sorted(few.iterdir()), run, resume=False)
    assert run.is_dir() and not any(run.iterdir())
    assert Run.open(cfg, images, run, resume=False).resume_point() == (0, 0)  # the retry just works


def test_a_start_killed_before_its_first_checkpoint_is_started_over(images, tmp_path):
    cfg = load_config("cpu", TINY)
    run = tmp_path / "run"
    Run.open(cfg, images, run, resume=False)  # config, provenance and PCA written; then "killed"
    (run / "banks").mkdir()
    (run / "banks" / "phase0-K.bank").write_bytes(b"half a bank")
    (run / "train_log.jsonl").write_text('{"step": 0, "glob')
    assert not (run / "checkpoints" / "latest").exists()
    for resume in (False, True):  # a plain retry and --resume both start it over
        opened = Run.open(cfg, images, run, resume=resume)
        assert opened.resume_point() == (0, 0)
        assert not (run / "banks").exists() and not (run / "train_log.jsonl").exists()
    (run / "checkpoints" / "Q1").mkdir(parents=True)  # a phase checkpoint without latest: never cleared
    with pytest.raises(RunDirExists):
        Run.open(cfg, images, run, resume=False)
    assert (run / "checkpoints" / "Q1").is_dir()
    shutil.rmtree(run / "checkpoints")
    (run / "notes.txt").write_text("mine")  # nor is a folder holding something else
    with pytest.raises(RunDirExists, match="not empty; pass --resume"):
        Run.open(cfg, images, run, resume=False)
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(NothingToResume, match="not a qkcopy run's; choose another --out"):
        Run.open(cfg, images, run, resume=True)
    assert Run.open(cfg, images, tmp_path / "new", resume=True).resume_point() == (0, 0)  # --resume that starts


@pytest.mark.parametrize("override, key", [("loss.tau=-1", "loss.tau"), ("data.batch_size=0", "data.batch_size"),
                                           ("optim.name=sgd", "optim.name"), ("optim.lr=0", "optim.lr"),
                                           ("schedule.phases=[Q,X]", "schedule.phases"),
                                           ("data.pca_images=8", "data.pca_images"),
                                           ("schedule.checkpoint_every=0", "schedule.checkpoint_every")])
def test_bad_config_values_are_refused_before_any_work(images, tmp_path, capsys, override, key):
    run = tmp_path / "run"
    refused(["train", "--train-images", str(images[0].parent), "--out", str(run), *TINY, override], capsys,
            f"config key {key} must be")
    assert not run.exists()


def test_resume_with_another_config_names_the_key(tiny_run, images, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    line = refused(["train", "--train-images", str(images[0].parent), "--out", str(run), "--resume", "--config",
                    str(run / "config.yaml"), "loss.tau=0.05", "optim.lr=0.001"], capsys,
                   "differs from", "in loss.tau, optim.lr", "loss.tau: 0.07 in the run, 0.05 given")
    assert "optim.lr: 0.0001 in the run, 0.001 given" in line
    with pytest.raises(ConfigError) as err:
        Run.open(load_config(run / "config.yaml", ["loss.tau=0.05"]), images, run, resume=True)
    assert err.value.where == "loss.tau"


def _weights(run):
    return load_file(run / "checkpoints" / "latest" / "weights.safetensors")


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_kill_inside_the_checkpoint_swap_resumes_exactly_and_the_log_has_each_step_once(images, tmp_path):
    cfg = load_config("cpu", TINY)
    train(cfg, images, tmp_path / "straight")
    run = tmp_path / "run"
    train(cfg, images, run, stop_after_steps=2)  # checkpoint at Q1 step 2
    ckpts = run / "checkpoints"
    # killed between the swap's two renames (latest moved aside, the new one not yet in place) while the
    # new checkpoint was half written, after logging a step the checkpoint does not hold, mid-line
    (ckpts / "latest").rename(ckpts / ".latest.old-4242")
    (ckpts / ".latest.tmp-abc").mkdir()
    (ckpts / ".latest.tmp-abc" / "weights.safetensors").write_bytes(b"\0" * 10)
    logged = _log(run)
    with open(run / "train_log.jsonl", "a") as f:
        f.write(json.dumps(dict(logged[-1], step=2, global_step=2, loss=123.0)) + "\n")
        f.write('{"segment": "Q1", "st')
    train(cfg, images, run, resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == ["K1", "Q1", "latest"]  # leftovers of the swap gone
    assert [r["global_step"] for r in _log(run)] == list(range(6))
    assert [r["loss"] for r in _log(run)] == [r["loss"] for r in _log(tmp_path / "straight")]
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_an_unknown_backbone_is_refused_before_the_images_are_read(images, tmp_path, capsys):
    run = tmp_path / "run"
    refused(["train", "--train-images", str(images[0].parent), "--out", str(run), *TINY,
             "model.backbone=efficientnet_lite9"], capsys, "unknown timm model 'efficientnet_lite9'")
    assert not run.exists()
    with pytest.raises(ValueError, match="unknown timm model"):  # not "0 readable training images": first
        Run.open(load_config("cpu", TINY + ["model.backbone=efficientnet_lite9"]), [tmp_path / "none.jpg"], run,
                 resume=False)


def test_a_reader_uses_the_previous_checkpoint_while_a_swap_is_cut_short(tiny_run, tmp_path):
    from qkcopy.model.trained import load_trained

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    fingerprint = load_trained(run).fingerprint
    (run / "checkpoints" / "latest").rename(run / "checkpoints" / ".latest.old-77")
    assert load_trained(run).fingerprint == fingerprint  # read from the checkpoint being replaced
    assert not (run / "checkpoints" / "latest").exists()  # and nothing renamed by a reader
