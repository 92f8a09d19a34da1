"""The GPU check (`qkcopy bench --gpu-check`) runs end to end at tiny sizes on the CPU, so that it cannot rot
before a GPU runs it; figures are not asserted (timing is noise), their presence and sanity are."""

import json
import math

from qkcopy.cli import main
from qkcopy.perf.gpu_check import GpuCheckConfig

TINY = ["bench", "--gpu-check", "--device", "cpu", "--sizes", "600", "1200", "--backbone", "efficientnet_lite0",
        "--image-size", "32", "--batch", "4", "--repeats", "1", "--embed-images", "4", "--workers", "0",
        "--sequence-steps", "2", "--threads", "1"]


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main([*TINY, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["pass_sizes"] == [600, 1200] and r["config"]["step_size"] == 600
    assert all(_positive(v) for v in r["floors"].values())
    assert [p["n"] for p in r["passes"]] == [600, 1200]
    for p in r["passes"]:
        assert p["bank_bytes"] == p["n"] * (1280 + 256) * 2 and p["peak_bytes"] is None  # no CUDA here
        assert all(_positive(p[k]) for k in ("fp32_s", "bf16_s", "over_bandwidth_floor", "fp32_over_flop_floor"))
    s = r["steps"]
    assert _positive(s["qk_over_simclr"]) and s["sequence"]["steps"] == 2 and s["embed"]["images"] == 4
    assert s["sequence"]["equal_to_full_pass"] == 2  # the bounded miner's negatives = the full pass's
    printed = capsys.readouterr().out
    assert "| 1,200 |" in printed and "exact bounded miner" in printed and "bare forward" in printed
    assert "same negatives as the full pass on 2/2 steps" in printed


def test_default_check_is_the_paper_setting_at_1m_and_10m_rows():
    cfg = GpuCheckConfig.paper()
    assert cfg.bench.backbone == "efficientnet_b3" and cfg.bench.image_size == 224 and cfg.bench.batch == 32
    assert cfg.pass_sizes == (1_000_000, 10_000_000) and cfg.step_size == 1_000_000
    assert cfg.bench.device == "cuda"
