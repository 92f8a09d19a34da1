"""Broad query synthesis: the non-AugLy training edits, their families, recipes with them, mixed strength."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from qkcopy.data.augment import NUM_OPS, OPS, make_query, sample_recipe
from qkcopy.data.extra_edits import EXTRA_OPS, apply_extra, sample_extra_params
from qkcopy.data.families import FAMILY_OPS, excluded_ops, family_of_op


def _photo(seed=0, size=(96, 72)):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((base + rng.normal(0, 25, base.shape)).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("op", sorted(EXTRA_OPS))
@pytest.mark.parametrize("m", [0.35, 1.0])
def test_extra_edit_is_seeded_json_and_changes_the_image(op, m):
    img, other = _photo(0), _photo(1, (140, 100))
    for seed in range(6):
        p = sample_extra_params(op, random.Random(seed), m)
        assert p == sample_extra_params(op, random.Random(seed), m)
        assert json.loads(json.dumps(p)) == p
        a, b = apply_extra(img, op, p, other), apply_extra(img, op, p, other)
        assert a.mode == "RGB" and min(a.size) >= 8 and np.array_equal(np.asarray(a), np.asarray(b))
        changed = a.size != img.size or np.abs(np.asarray(a, float) - np.asarray(img, float)).mean() > 1
        assert changed, (op, seed)
    assert apply_extra(img, op, p, None).mode == "RGB"  # tile_grid without a background photo too


def test_tile_grid_holds_the_copy_unchanged_in_its_cell():
    img = _photo(3)
    p = dict(rows=2, cols=3, cell=4, gap=0.05, fill=[0, 0, 255], crop_seed=1)
    out = np.asarray(apply_extra(img, "tile_grid", p, _photo(4, (200, 150))))
    g = round(0.05 * 96)
    i, j = divmod(4, 3)
    x, y = g + j * (96 + g), g + i * (72 + g)
    assert out.shape == (2 * 72 + 3 * g, 3 * 96 + 4 * g, 3)
    assert np.array_equal(out[y:y + 72, x:x + 96], np.asarray(img))
    assert (out[0, 0] == [0, 0, 255]).all()


def test_every_extra_op_has_one_family_and_holding_out_removes_it():
    for op in EXTRA_OPS:
        assert op not in OPS and sum(op in ops for ops in FAMILY_OPS.values()) == 1, op
    assert family_of_op("tile_grid") == "collage" and family_of_op("quantize_colours") == "posterize"
    held = excluded_ops(["collage", "rotation", "posterize"])
    assert {"tile_grid", "rotate_expand", "quantize_colours", "overlay_onto_background_image", "rotate"} == held
    seen = set()
    for seed in range(400):
        ops = {e.op for e in sample_recipe(seed, "hard", held, broad=True)}
        assert not ops & held
        seen |= ops
    assert {"jpeg_chain", "blur_frame", "app_frame"} <= seen  # the others do appear


def test_broad_recipes_use_extra_ops_and_default_recipes_do_not():
    broad = [sample_recipe(s, "medium", broad=True) for s in range(300)]
    plain = [sample_recipe(s, "medium") for s in range(300)]
    assert not any(e.op in EXTRA_OPS for r in plain for e in r)
    share = np.mean([any(e.op in EXTRA_OPS for e in r) for r in broad])
    assert 0.2 < share < 0.8
    assert all(sum(e.op in {"tile_grid", "app_frame", "meme_format", "overlay_onto_screenshot",
                            "overlay_onto_background_image"} for e in r) <= 1 for r in broad)  # one container


def test_mixed_strength_draws_every_strength():
    counts = {len(sample_recipe(s, "mixed")) for s in range(300)}
    assert min(counts) == NUM_OPS["light"][0] and max(counts) == NUM_OPS["hard"][1]
    assert sample_recipe(7, "mixed") == sample_recipe(7, "mixed")


def test_make_query_with_broad_synthesis_is_deterministic():
    img, bg = _photo(5), _photo(6, (120, 120))
    for seed in range(20):
        a, ra = make_query(img, seed, "mixed", background=bg, broad=True)
        b, rb = make_query(img, seed, "mixed", background=bg, broad=True)
        assert ra == rb and np.array_equal(np.asarray(a), np.asarray(b))


def test_op_weights_reweight_the_pool_and_ops_of_weight_zero_are_never_drawn():
    default = [sample_recipe(s, "mixed", broad=True) for s in range(300)]
    assert default == [sample_recipe(s, "mixed", broad=True, weights={}) for s in range(300)]  # no weights: as before
    assert not {e.op for r in default for e in r} & {"thumbnail", "tone_curve"}  # weight 0 in EXTRA_OPS
    heavy = [sample_recipe(s, "mixed", broad=True, weights={"thumbnail": 6.0, "crop": 0.0}) for s in range(300)]
    ops = [e.op for r in heavy for e in r]
    assert "crop" not in ops and ops.count("thumbnail") > 100  # weight 6 of ~37: in most recipes
    held = excluded_ops(["recompression"])  # a held-out family wins over its ops' weights
    assert not any(e.op in held for s in range(100) for e in sample_recipe(s, "hard", held, True, {"thumbnail": 9}))


def test_thumbnail_is_a_low_resolution_copy_and_tone_curve_can_invert():
    img = _photo(7, (320, 240))
    small = apply_extra(img, "thumbnail", dict(side=40, quality=70, filter="box", enlarge=""))
    assert small.size == (40, 30)
    big = apply_extra(img, "thumbnail", dict(side=40, quality=70, filter="box", enlarge="nearest"))
    a = np.asarray(big, float)
    assert big.size == img.size and np.abs(np.diff(a, axis=1)).mean() < 0.5 * np.abs(np.diff(np.asarray(img, float),
                                                                                              axis=1)).mean()
    flat = Image.new("RGB", (8, 8), (64, 128, 192))
    neg = np.asarray(apply_extra(flat, "tone_curve", dict(gamma=1.0, gains=[1.0, 1.0, 1.0], negative=True)))
    assert (neg[0, 0] == [191, 127, 63]).all()
