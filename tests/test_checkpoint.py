"""Checkpoints: tensors in safetensors, the rest in JSON, written atomically, loaded strictly without pickle."""

import json

import pytest
import torch

from qkcopy.checkpoint import load_extra, load_optimizer, load_weights, read_state, save_checkpoint


def _models(seed):
    torch.manual_seed(seed)
    return {"q": torch.nn.Linear(4, 3), "k": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())}


def test_round_trip_of_weights_optimizer_state_and_extras(tmp_path):
    models = _models(0)
    opt = torch.optim.Adam([*models["q"].parameters()], lr=1e-3)
    models["q"](torch.randn(5, 4)).sum().backward()
    opt.step()
    queue = torch.randn(7, 3)
    save_checkpoint(tmp_path / "latest", models, dict(phase=1, next_step=4), opt, {"moco_queue": queue})

    fresh = _models(1)
    load_weights(tmp_path / "latest", fresh)
    for name in models:
        for (k, v), w in zip(models[name].state_dict().items(), fresh[name].state_dict().values()):
            assert torch.equal(v, w), k
    opt2 = torch.optim.Adam([*fresh["q"].parameters()], lr=1e-3)
    load_optimizer(tmp_path / "latest", opt2)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert float(a["step"]) == float(b["step"])
    assert torch.equal(load_extra(tmp_path / "latest")["moco_queue"], queue)
    state = read_state(tmp_path / "latest")
    assert (state["phase"], state["next_step"]) == (1, 4) and "optimizer" in state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # no temporary left behind


def test_files_hold_no_pickle(tmp_path):
    save_checkpoint(tmp_path / "c", _models(0), dict(phase=0))
    raw = (tmp_path / "c" / "weights.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {k.split(".")[0] for k in header if k != "__metadata__"} == {"q", "k"}
    assert json.loads((tmp_path / "c" / "state.json").read_text()) == {"phase": 0}


def test_loading_is_strict_and_names_the_problem(tmp_path):
    save_checkpoint(tmp_path / "c", {"q": torch.nn.Linear(4, 3)}, dict(phase=0))
    with pytest.raises(ValueError, match="no weights for model 'k'"):
        load_weights(tmp_path / "c", {"k": torch.nn.Linear(4, 3)})
    with pytest.raises(ValueError, match="model 'q': missing keys"):
        load_weights(tmp_path / "c", {"q": torch.nn.Sequential(torch.nn.Linear(4, 3))})
    with pytest.raises((FileNotFoundError, ValueError), match="not a qkcopy checkpoint"):
        read_state(tmp_path / "nowhere")


def test_a_second_save_replaces_the_first_whole(tmp_path):
    a, b = _models(0), _models(1)
    save_checkpoint(tmp_path / "latest", a, dict(step=1), torch.optim.Adam(a["q"].parameters()))
    save_checkpoint(tmp_path / "latest", b, dict(step=2))  # without an optimizer this time
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["state.json", "weights.safetensors"]
    assert read_state(tmp_path / "latest") == {"step": 2}
