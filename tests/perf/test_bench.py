"""`qkcopy bench` runs at a tiny size and writes well-formed JSON (figures are not asserted: timing is noise)."""

import json
import math

import pytest
import torch

from qkcopy.perf.runner import BenchConfig, format_tables, head_flops_per_row, run_bench
from qkcopy.cli import main
from qkcopy.model.descriptor import Head

TINY = ["--sizes", "40", "80", "--threads", "1", "--batch", "4", "--image-size", "32", "--repeats", "1",
        "--embed-images", "4", "--workers", "0"]
ROW_FIELDS = {"n", "chunk_rows", "bank_bytes", "bank_pass_s", "bandwidth_floor_s", "flop_floor_s",
              "over_bandwidth_floor", "over_flop_floor", "qk_step_s", "simclr_step_s", "qk_over_simclr",
              "qk_times", "simclr_times", "saved_for_backward_bytes", "bank_pass_bf16_s", "qk_bf16_mining_step_s",
              "qk_bf16_mining_times", "qk_bf16_mining_over_simclr"}


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--no-memory", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"config", "machine", "floors", "sizes", "embed", "world"}
    assert result["config"]["sizes"] == [40, 80] and result["world"] == [] and result["machine"]["threads"] == 1
    assert all(_positive(v) for v in result["floors"].values())
    assert [r["n"] for r in result["sizes"]] == [40, 80]
    for row in result["sizes"]:
        assert ROW_FIELDS <= set(row) and "step_peak_bytes" not in row
        assert all(_positive(row[k]) for k in ROW_FIELDS - {"qk_times", "simclr_times", "qk_bf16_mining_times"})
        assert len(row["qk_times"]) == 1
        assert row["bank_bytes"] == row["n"] * (1280 + 256) * 2  # fp16 rows of efficientnet_lite0 + gist256
    assert result["embed"]["images"] == 4 and _positive(result["embed"]["embed_images_per_s"])
    printed = capsys.readouterr().out
    assert "| 40 |" in printed and "| 80 |" in printed and str(out) in printed


def test_bench_sequence_of_bounded_steps(tmp_path, capsys):
    """--no-full-pass leaves only the run of bounded-miner QK steps against SimCLR-style steps."""
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--no-memory", "--no-full-pass", "--sequence-steps", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["sizes"]
    for row in rows:
        assert not ROW_FIELDS - {"n", "chunk_rows"} & set(row)
        seq = row["sequence"]
        assert seq["steps"] == 3 and len(seq["qk_bounded_times"]) == len(seq["simclr_times"]) == 3
        assert seq["full_passes"] >= 1 and len(seq["fractions_evaluated"]) == 3
        assert seq["fractions_evaluated"][0] == 1.0 and all(0 < f <= 1 for f in seq["fractions_evaluated"])
        assert _positive(seq["qk_bounded_over_simclr"]) and _positive(seq["mean_fraction_evaluated"])
    printed = capsys.readouterr().out
    assert "exact bounded mining" in printed and "| 80 | 3 |" in printed


@pytest.mark.slow
def test_bench_memory_and_world_scaling():
    threads_before = torch.get_num_threads()
    cfg = BenchConfig(sizes=(40,), batch=4, image_size=32, repeats=1, embed_images=2, workers=0, world=(1, 2),
                      threads=1)
    result = run_bench(cfg)
    row = result["sizes"][0]
    assert row["before_bytes"] > 0 and row["step_peak_bytes"] >= 0
    assert [w["world"] for w in result["world"]] == [1, 2]
    assert all(_positive(w["step_s"]) for w in result["world"])
    assert "| 2 |" in format_tables(result)
    assert torch.get_num_threads() == threads_before  # run_bench leaves the thread count as it found it


def test_head_flops_counts_every_linear_layer():
    assert head_flops_per_row(Head(12, 6, 16)) == 2 * (18 * 16 + 16 * 6)
    assert head_flops_per_row(Head(12, 6, 16, variant="competition")) == 2 * (18 * 16 + 16 * 6 + 6 * 16 + 16 * 6)


def test_bench_refuses_sizes_below_the_batch():
    with pytest.raises(ValueError, match="at least the batch"):
        run_bench(BenchConfig(sizes=(3,), batch=4, device=str(torch.device("cpu"))))
