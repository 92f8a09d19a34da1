"""Presets, key=value overrides, type coercion, schedules derived from the config."""

import dataclasses
import math

import pytest
import yaml

from qkcopy.config import (PRESET_DIR, TrainConfig, differing_keys, load_config, lr_at, phase_steps, preset_names,
                           to_dict)


def test_config_presets_overrides_and_unknown_keys():
    cfg = load_config("paper")
    assert (cfg.loss.tau, cfg.loss.negatives_per_positive, cfg.loss.w_pos, cfg.loss.w_neg) == (0.07, 10, 1.0, 3.0)
    assert (cfg.optim.lr, cfg.optim.final_lr_fraction, cfg.data.batch_size) == (1e-4, 0.5, 32)
    assert load_config("cpu", ["loss.tau=0.05"]).loss.tau == 0.05
    with pytest.raises(ValueError, match="loss.tua"):
        load_config("cpu", ["loss.tua=0.05"])
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("nope")
    # YAML 1.1 reads 3e-5 as a string and 1 as an int: float fields get numbers, wrong types a clear error
    coerced = load_config("cpu", ["optim.lr=3e-5", "loss.tau=1", "data.max_train_images=null"])
    assert (coerced.optim.lr, coerced.loss.tau, coerced.data.max_train_images) == (3e-5, 1.0, None)
    assert isinstance(coerced.loss.tau, float)
    with pytest.raises(ValueError, match="optim.lr must be a number, got 'fast'"):
        load_config("cpu", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="schedule.steps_per_phase must be an integer, got 2.5"):
        load_config("cpu", ["schedule.steps_per_phase=2.5"])


def test_cosine_schedule_to_half():
    cfg = load_config("paper").optim
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(50, 100, cfg) == pytest.approx(0.75e-4)
    assert lr_at(100, 100, cfg) == pytest.approx(0.5e-4)
    assert phase_steps(load_config("paper").schedule, n_train=1000, batch_size=32) == math.ceil(1000 / 32)


def test_presets_resolve_from_the_repository_configs_folder():
    assert preset_names() == ["cpu", "cpu-long", "demo", "paper", "simclr-paper"]
    repo_configs = PRESET_DIR.parents[2] / "configs"  # the configs/ the README names
    assert sorted(p.stem for p in repo_configs.glob("*.yaml")) == preset_names()
    assert load_config(repo_configs / "cpu.yaml") == load_config("cpu")


def test_defaults_are_the_papers_values():
    cfg = TrainConfig()
    assert (cfg.loss.tau, cfg.loss.negatives_per_positive, cfg.loss.w_pos, cfg.loss.w_neg) == (0.07, 10, 1.0, 3.0)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.final_lr_fraction) == ("adam", 1e-4, 0.5)
    assert (cfg.data.batch_size, cfg.model.descriptor_dim, cfg.model.head_scale) == (32, 256, 0.01)
    assert cfg.schedule.phases == ("Q", "K", "Q", "K", "Q")


def test_cpu_preset_differs_from_the_paper_only_where_documented():
    cpu, paper = to_dict(load_config("cpu")), to_dict(load_config("paper"))
    assert cpu["model"]["head_init"] == "pca" and paper["model"]["head_init"] == "random"
    assert cpu["loss"]["tau"] == 1.4 and paper["loss"]["tau"] == 0.07


def test_simclr_paper_preset_is_cpu_with_the_papers_simclr_setting():
    """Issue 21: batch 192 × 8 = 1,536 (grad-cached on CPU), lr 1e-3, one epoch a segment; the rest is `cpu`."""
    cfg, cpu = load_config("simclr-paper"), load_config("cpu")
    assert (cfg.method, cfg.data.batch_size, cfg.optim.name, cfg.optim.lr) == ("simclr", 1536, "adam", 1e-3)
    assert 0 < cfg.data.grad_cache_chunk < cfg.data.batch_size and cpu.data.grad_cache_chunk == 0
    assert (cfg.schedule.epochs_per_phase, cfg.schedule.steps_per_phase) == (1.0, None)
    assert phase_steps(cfg.schedule, cfg.data.max_train_images, cfg.data.batch_size) == 2
    assert cfg.schedule.phases == cpu.schedule.phases and cfg.optim.final_lr_fraction == cpu.optim.final_lr_fraction
    assert differing_keys(cfg, cpu) == ["data.batch_size", "data.grad_cache_chunk", "method", "optim.lr",
                                        "schedule.checkpoint_every", "schedule.steps_per_phase"]
    with pytest.raises(ValueError, match="data.grad_cache_chunk must be >= 0"):
        load_config("simclr-paper", ["data.grad_cache_chunk=-1"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("demo", ["loss.tau=0.5", "schedule.phases=[Q,K,Q]"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.schedule.phases == ("Q", "K", "Q")


def test_bad_values_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="method must be one of"):
        load_config("cpu", ["method=byol"])
    with pytest.raises(ValueError, match="schedule.phases"):
        load_config("cpu", ["schedule.phases=[Q,X]"])
    with pytest.raises(ValueError, match="is not key=value"):
        load_config("cpu", ["loss.tau"])
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config("cpu", ["loss=3"])


def test_steps_per_phase_overrides_epochs():
    schedule = dataclasses.replace(load_config("paper").schedule, steps_per_phase=7)
    assert phase_steps(schedule, n_train=10_000, batch_size=32) == 7
    assert phase_steps(load_config("paper").schedule, n_train=5, batch_size=32) == 1
    assert math.isclose(lr_at(1000, 10, load_config("paper").optim), 0.5e-4)  # past the end: stays at α·lr


def test_holdout_families_are_checked_against_the_known_families():
    cfg = load_config("cpu", ["data.holdout_families=[perspective,collage]"])
    assert cfg.data.holdout_families == ("perspective", "collage")
    with pytest.raises(ValueError, match="data.holdout_families"):
        load_config("cpu", ["data.holdout_families=[teleport]"])


def test_op_weights_are_a_mapping_of_known_ops_to_weights_and_survive_the_run_file():
    broad = ["data.synthesis=broad"]
    cfg = load_config("cpu", broad + ["data.op_weights={pixelization: 3, thumbnail: 1.5}", "data.op_weights.grayscale=2"])
    assert cfg.data.op_weights == {"pixelization": 3.0, "thumbnail": 1.5, "grayscale": 2.0}
    again = load_config(None, [f"{k}={yaml.safe_dump(v)}" for k, v in (("data", to_dict(cfg)["data"]),)])
    assert again.data.op_weights == cfg.data.op_weights and differing_keys(cfg, load_config("cpu", broad)) == [
        "data.op_weights.grayscale", "data.op_weights.pixelization", "data.op_weights.thumbnail"]
    for bad, match in (("data.op_weights={teleport: 1}", "data.op_weights.teleport must be an edit op"),
                       ("data.op_weights={crop: -1}", "data.op_weights.crop must be a finite number >= 0"),
                       ("data.op_weights=3", "data.op_weights must be a mapping of names to numbers"),
                       ("data.op_weights={crop: lots}", "data.op_weights must be a mapping")):
        with pytest.raises(ValueError, match=match):
            load_config("cpu", [bad])
    from qkcopy.data.augment import OPS

    nothing_left = "{" + ", ".join(f"{op}: 0" for op in OPS) + "}"
    with pytest.raises(ValueError, match="data.op_weights must be leaving at least one edit op to draw"):
        load_config("paper", [f"data.op_weights={nothing_left}"])
    assert load_config("paper", [f"data.op_weights={nothing_left[:-1]}, crop: 1}}"]).data.op_weights["crop"] == 1.0
    with pytest.raises(ValueError, match="thumbnail must be an edit op of data.synthesis augly .*need data.synthesis: broad"):
        load_config("paper", ["data.op_weights={thumbnail: 1}"])
