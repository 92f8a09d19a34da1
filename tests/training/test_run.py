"""A run directory: what Run.open writes, the resume point it reads back, evaluations appended per segment."""

import json

import pytest
import torch
import yaml
from testkit import draw_images

from qkcopy.config import load_config, to_dict
from qkcopy.model.pca import PCA
from qkcopy.training.run import Run, evaluate_run

TINY = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
        "model.descriptor_dim=16", "data.batch_size=4", "data.workers=0", "data.pca_images=24",
        "schedule.steps_per_phase=3", "schedule.phases=[Q,K]", "device=cpu"]  # the cpu preset at tiny sizes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return draw_images(tmp_path_factory.mktemp("imgs"), 24, size=40, prefix="t")


def test_open_writes_config_provenance_and_the_gist_pca(images, tmp_path, one_thread):
    cfg = load_config("cpu", TINY)
    run = Run.open(cfg, images, tmp_path / "run", resume=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == to_dict(cfg)
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["n_train"] == 24 and prov["world_size"] == 1 and prov["torch"] == torch.__version__
    pca = PCA.load(tmp_path / "run" / "gist_pca.safetensors")
    assert (pca.in_dim, pca.out_dim) == (960, 16) and run.gist256.fingerprint == pca.fingerprint()
    assert run.resume_point() == (0, 0) and run.read_evaluations() == []
    assert run.global_step(1, 2) == 5  # 3 steps a phase
    assert run.method.name == "qk" and run.method.extra_state() is None


def test_save_then_resume_point(images, tmp_path, one_thread):
    cfg = load_config("cpu", TINY)
    run = Run.open(cfg, images, tmp_path / "run", resume=False)
    opt = torch.optim.Adam(run.q.head.parameters())
    run.save(0, 2, opt)
    assert run.resume_point() == (0, 2)
    run.save(0, 3, opt, tag="Q1")  # the end of phase 0
    assert run.resume_point() == (1, 0)
    assert (tmp_path / "run" / "checkpoints" / "Q1" / "weights.safetensors").is_file()
    again = Run.open(cfg, images, tmp_path / "run", resume=True)
    for a, b in zip(again.q.state_dict().values(), run.q.state_dict().values()):
        assert torch.equal(a, b)


def test_moco_runs_carry_a_queue_and_start_k_as_a_copy_of_q(images, tmp_path, one_thread):
    run = Run.open(load_config("cpu", TINY + ["method=moco"]), images, tmp_path / "run", resume=False)
    assert run.method.queue.keys.shape == (0, 16) and set(run.method.extra_state()) == {"moco_queue"}
    for a, b in zip(run.q.state_dict().values(), run.k.state_dict().values()):
        assert torch.equal(a, b)


def test_evaluations_are_appended_per_segment(images, tmp_path, tiny_benchmark, one_thread):
    run = Run.open(load_config("cpu", TINY), images, tmp_path / "run", resume=False)
    row = evaluate_run(run, _load(tiny_benchmark), "init")
    assert row["segment"] == "init" and 0.0 <= row["micro_ap"] <= 1.0
    evaluate_run(run, _load(tiny_benchmark), "Q1")
    assert [r["segment"] for r in run.read_evaluations()] == ["init", "Q1"]


def _load(root):
    from qkcopy.data.benchmark import load_benchmark
    return load_benchmark(root)


def test_moco_queue_is_saved_and_restored_by_its_method(images, tmp_path, one_thread):
    cfg = load_config("cpu", TINY + ["method=moco"])
    run = Run.open(cfg, images, tmp_path / "run", resume=False)
    run.method.queue.push(torch.randn(5, 16))
    run.save(0, 2, torch.optim.Adam(run.q.head.parameters()))
    again = Run.open(cfg, images, tmp_path / "run", resume=True)
    assert torch.equal(again.method.queue.keys, run.method.queue.keys) and again.method.queue.keys.shape == (5, 16)
