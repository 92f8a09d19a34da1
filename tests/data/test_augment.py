import inspect
import json
import logging
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
from photo_pool import digest, picture
from PIL import Image

from qkcopy.cli import main
from qkcopy.data.query_folder import CELL, LABEL, augment_folder
from qkcopy.data import augment as aug
from qkcopy.data.augment import (
    OPS,
    STRENGTHS,
    Edit,
    QueryTransform,
    apply_recipe,
    make_query,
    sample_params,
    sample_recipe,
)
from qkcopy.seeds import derive_seed

BRIEF_OPS = {
    "crop", "scale", "pad", "pad_square", "rotate", "hflip", "vflip", "perspective_transform", "skew",
    "color_jitter", "grayscale", "blur", "sharpen", "random_noise", "pixelization", "encoding_quality",
    "opacity", "overlay_text", "overlay_emoji", "meme_format", "overlay_stripes", "overlay_onto_screenshot",
    "overlay_onto_background_image",
}






def test_op_list_covers_the_brief():
    assert BRIEF_OPS <= set(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_runs_and_changes_the_image(op, caplog):
    img = picture()
    edit = Edit(op, sample_params(op, random.Random(1), 1.0))
    json.dumps(edit.to_dict())  # JSON-serialisable
    with caplog.at_level(logging.WARNING, logger="qkcopy.data.augment"):
        out = apply_recipe(img, [edit])
    assert not caplog.records, caplog.text  # the op ran: no fallback
    assert out.mode == "RGB"
    assert out.size != img.size or digest(out) != digest(img)


def test_same_seed_same_pixels_different_seeds_differ():
    img = picture()
    for strength in STRENGTHS:
        a, ra = make_query(img, 123, strength)
        random.seed(999)  # the global states must not matter
        np.random.seed(999)
        b, rb = make_query(img, 123, strength)
        assert ra == rb and digest(a) == digest(b)
    outs = {digest(make_query(img, s, "medium")[0]) for s in range(8)}
    assert len(outs) == 8


def test_global_random_state_untouched():
    random.seed(5)
    np.random.seed(5)
    r0, n0 = random.getstate(), np.random.get_state()[1].copy()
    recipe = [Edit(op, sample_params(op, random.Random(2), 1.0)) for op in ("random_noise", "overlay_text",
                                                                          "overlay_emoji", "perspective_transform")]
    apply_recipe(picture(), recipe)
    make_query(picture(), 7, "hard")
    assert random.getstate() == r0 and (np.random.get_state()[1] == n0).all()


def test_recipe_json_round_trip_replays_exactly():
    img = picture()
    out, recipe = make_query(img, 77, "hard")
    loaded = [Edit.from_dict(d) for d in json.loads(json.dumps([e.to_dict() for e in recipe]))]
    assert loaded == recipe and digest(apply_recipe(img, loaded)) == digest(out)


SCRIPT_IMPORTS = """
import hashlib, random, numpy as np
from PIL import Image
from qkcopy.data.augment import OPS, Edit, apply_recipe, make_query, sample_params
"""
SCRIPT = """
every = [Edit(op, sample_params(op, random.Random(3), 0.6)) for op in sorted(OPS)]
print(digest(apply_recipe(picture(), every)))
for s in range(4):
    print(digest(make_query(picture(), s, "hard")[0]))
"""


def test_same_pixels_in_a_fresh_process():
    script = SCRIPT_IMPORTS + inspect.getsource(picture) + inspect.getsource(digest) + SCRIPT
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    every = [Edit(op, sample_params(op, random.Random(3), 0.6)) for op in sorted(OPS)]
    want = [digest(apply_recipe(picture(), every))] + [digest(make_query(picture(), s, "hard")[0]) for s in range(4)]
    assert got == want


def test_strengths_differ_in_number_of_ops_and_magnitude():
    counts = {s: [len(sample_recipe(seed, s)) for seed in range(300)] for s in STRENGTHS}
    assert set(counts["light"]) == {1, 2} and set(counts["medium"]) == {3, 4} and set(counts["hard"]) == {5, 6, 7}
    crops = {s: [1 - (p["x2"] - p["x1"]) for seed in range(300) for p in
                 [sample_params("crop", random.Random(seed), aug.MAGNITUDE[s])]] for s in aug.MAGNITUDE}
    assert max(crops["light"]) < 0.55 * 0.35 + 1e-3 < max(crops["hard"])  # hard crops harder
    assert np.mean(crops["light"]) < np.mean(crops["medium"]) < np.mean(crops["hard"])


def test_recipe_rules():
    for seed in range(300):
        ops = [e.op for e in sample_recipe(seed, "hard")]
        assert len(set(ops)) == len(ops)
        assert len(aug.CONTAINERS.intersection(ops)) <= 1
        assert "encoding_quality" not in ops[:-1]
    with pytest.raises(ValueError, match="strength"):
        sample_recipe(0, "extreme")
    with pytest.raises(ValueError, match="PIL image"):
        apply_recipe(np.zeros((4, 4, 3)), [])


def test_output_capped_and_rgb_on_odd_inputs(caplog):
    big = picture(1500, 300).convert("RGBA")
    for seed in range(6):
        out, _ = make_query(big, seed, "hard")
        assert out.mode == "RGB" and max(out.size) <= 512
    tiny = Image.new("L", (3, 2), 40)
    with caplog.at_level(logging.WARNING, logger="qkcopy.data.augment"):
        outs = [make_query(tiny, seed, "hard")[0] for seed in range(10)]
    assert all(o.mode == "RGB" and min(o.size) >= 1 for o in outs)
    assert "skipped" in caplog.text  # some edits cannot work on 3x2 pixels: logged, not raised












def test_query_transform_seeds_and_backgrounds(tmp_path):
    t = QueryTransform("light", base_seed=3)
    img = picture()
    assert digest(t(img, 5, 0)) == digest(t(img, 5, 0)) == digest(pickle.loads(pickle.dumps(t))(img, 5, 0))
    assert len({digest(t(img, 5, e)) for e in range(6)}) == 6
    green = tmp_path / "green.png"
    Image.new("RGB", (120, 120), (0, 255, 0)).save(green)
    tb = QueryTransform("light", base_seed=3, backgrounds=(green,))
    index = next(i for i in range(2000) if [e.op for e in tb.query(img, i)[1]] == ["overlay_onto_background_image"])
    out = np.asarray(tb(picture(32, 64), index))  # narrow source never reaches the right edge
    assert out.shape[:2] == (120, 120) and out[-1, -1].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="strength"):
        QueryTransform("wild")


def test_cli_writes_queries_recipes_and_sheet(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        picture(80 + 10 * k, 60).save(src / f"p{k}.png")
    (src / "broken.jpg").write_text("nope")
    summary = augment_folder(src, tmp_path / "out", n=2, strength="hard", seed=1, limit=0)
    assert summary.written == 6 and summary.skipped == 1
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["contact_sheet.png", "p0_q0.jpg", "p0_q1.jpg", "p1_q0.jpg", "p1_q1.jpg", "p2_q0.jpg",
                     "p2_q1.jpg", "recipes.json"]
    doc = json.loads((tmp_path / "out" / "recipes.json").read_text())
    assert [q["query"] for q in doc["queries"]][:2] == ["p0_q0.jpg", "p0_q1.jpg"]
    q = doc["queries"][3]  # p1.png copy 1; p1 is item 2 of the scan (broken.jpg is item 0)
    assert q["query"] == "p1_q1.jpg" and q["seed"] == derive_seed(1, 2, 1)
    assert [Edit.from_dict(e) for e in q["edits"]] == sample_recipe(q["seed"], "hard")
    assert Image.open(summary.sheet).size == (3 * CELL, 3 * (CELL + LABEL))
    assert Image.open(tmp_path / "out" / "p2_q1.jpg").mode == "RGB"
    assert main(["augment", "--images", str(src), "--out", str(tmp_path / "o1"), "-n", "1", "--limit", "1"]) == 2
    assert main(["augment", "--images", str(src), "--out", str(tmp_path / "o2"), "-n", "1", "--limit", "2"]) == 0
    assert len(json.loads((tmp_path / "o2" / "recipes.json").read_text())["queries"]) == 1
    assert main(["augment", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o3")]) == 2
