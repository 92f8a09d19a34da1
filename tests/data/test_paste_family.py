"""The benchmark-only families: "paste" (the whole photo at 40–80 % of another photo's side, pasted into it) and
"lowres" (the whole photo as a low-resolution re-upload)."""

import numpy as np
import pytest
from PIL import Image

from qkcopy.data.families import (
    BENCHMARK_FAMILIES,
    FAMILIES,
    excluded_ops,
    heldout_edit,
)


@pytest.mark.parametrize("seed", range(12))
def test_paste_puts_the_whole_photo_at_40_to_80_percent(seed):
    img = Image.new("RGB", (120, 90), (250, 20, 20))  # red, 4:3
    back = Image.new("RGB", (300, 260), (20, 20, 250))  # blue
    out = heldout_edit(img, "paste", seed, [back])
    assert out.size == back.size
    red = (np.asarray(out)[..., 0] > 200) & (np.asarray(out)[..., 2] < 60)  # (h, w) the pasted photo's pixels
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    w, h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    assert abs(w / h - 120 / 90) < 0.05  # the whole photo, aspect kept
    assert 0.4 * 300 - 2 <= w <= 0.8 * 300 + 2  # 40–80 % of the limiting side (the width here)
    assert red.sum() >= 0.97 * w * h  # pasted in one piece, nothing drawn over it


def test_paste_is_by_name_only_and_not_held_out_of_training_alone():
    assert "paste" not in FAMILIES and "paste" in BENCHMARK_FAMILIES
    assert excluded_ops(["paste"]) == {"overlay_onto_background_image"}
    out = heldout_edit(Image.new("RGB", (64, 48), (200, 0, 0)), "paste", 1)  # no other photo: a gradient canvas
    assert out.size == (64, 48)


def test_make_benchmark_heldout_paste(tmp_path):
    from testkit import draw_images

    from qkcopy.data.synth import BenchmarkOptions, make_benchmark

    draw_images(tmp_path / "photos", 16, seed=4, size=96)
    bench = make_benchmark(tmp_path / "photos", tmp_path / "b", options=BenchmarkOptions(
        n_references=4, n_queries=4, matched_fraction=0.5, n_train=4, heldout=("paste",)))
    import json

    queries = json.loads((tmp_path / "b" / "manifest.json").read_text())["queries"]
    assert {q["family"] for q in queries} == {"paste"} and all(len(q["others"]) == 3 for q in queries)
    assert len(bench.query_ids) == 4


@pytest.mark.parametrize("seed", range(6))
def test_lowres_is_the_whole_photo_at_32_to_96_px_kept_small_or_enlarged(seed):
    img = Image.new("RGB", (300, 200), (200, 0, 0))
    out = heldout_edit(img, "lowres", seed)
    assert out == heldout_edit(img, "lowres", seed)
    side = max(out.size)
    assert 32 <= side <= 96 or 64 <= side <= 480, out.size
    assert abs(out.width / out.height - 1.5) < 0.2  # the whole photo, not a crop
    assert "lowres" not in FAMILIES and excluded_ops(["lowres"]) == {"scale", "pixelization", "thumbnail"}
