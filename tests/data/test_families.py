"""Edit families: every AugLy op has one, held-out edits are seeded and change the image, exclusion works."""

import random

import numpy as np
import pytest
from PIL import Image

from qkcopy.data.augment import OPS, sample_recipe
from qkcopy.data.families import FAMILIES, FAMILY_OPS, excluded_ops, family_of_op, heldout_edit


def _photo(seed=0, size=(120, 90)):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))


def test_every_training_op_belongs_to_exactly_one_family():
    for op in OPS:
        assert sum(op in ops for ops in FAMILY_OPS.values()) == 1, op
        assert op in FAMILY_OPS[family_of_op(op)]
    assert FAMILY_OPS["posterize"] == {"quantize_colours"}  # broad synthesis only (qkcopy.data.extra_edits)
    assert FAMILY_OPS["collage"] == {"overlay_onto_background_image", "tile_grid"}
    with pytest.raises(ValueError, match="no family"):
        family_of_op("teleport")


@pytest.mark.parametrize("family", FAMILIES)
def test_heldout_edit_is_seeded_and_changes_the_image(family):
    img, other = _photo(0), _photo(1)
    a = heldout_edit(img, family, seed=5, others=[other])
    b = heldout_edit(img, family, seed=5, others=[other])
    c = heldout_edit(img, family, seed=6, others=[other])
    assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
    changed = a.size != img.size or np.abs(np.asarray(a, dtype=float) - np.asarray(img, dtype=float)).mean() > 2
    assert changed, family
    assert a.size != c.size or not np.array_equal(np.asarray(a), np.asarray(c))


def test_heldout_edits_leave_global_random_state_alone():
    random.seed(1)
    np.random.seed(1)
    before = (random.random(), np.random.random())
    random.seed(1)
    np.random.seed(1)
    for family in FAMILIES:
        heldout_edit(_photo(), family, 3, [_photo(2)])
    assert (random.random(), np.random.random()) == before


def test_excluded_families_never_reach_a_training_recipe():
    ops = excluded_ops(["perspective", "rotation", "sticker"])
    assert ops == {"perspective_transform", "skew", "rotate", "rotate_expand", "overlay_emoji", "overlay_text",
                   "overlay_stripes"}
    for seed in range(300):
        assert not {e.op for e in sample_recipe(seed, "hard", ops)} & ops
        assert sample_recipe(seed, "medium", frozenset()) == sample_recipe(seed, "medium")  # unchanged default
    with pytest.raises(ValueError, match="unknown edit families"):
        excluded_ops(["teleport"])
    with pytest.raises(ValueError, match="unknown edit family"):
        heldout_edit(_photo(), "teleport", 0)
