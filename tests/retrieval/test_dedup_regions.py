"""`qkcopy dedup --regions`: a picture pasted into another is paired with its source, the matching region kept
and drawn on the contact sheet."""

import json

import numpy as np
from PIL import Image
from testkit import FAST, draw_images

from qkcopy.cli import main
from qkcopy.data.regions import box_iou
from qkcopy.model.trained import load_trained
from qkcopy.retrieval.dedup import _thumb, find_duplicates


def _folder(tmp_path):
    refs = draw_images(tmp_path / "imgs", 10, seed=10, size=160, prefix="R")
    host = Image.open(draw_images(tmp_path / "hosts", 1, seed=31, size=320)[0]).convert("RGB")
    true_box = (100, 60, 260, 220)
    host.paste(Image.open(refs[5]).convert("RGB").resize((160, 160)), true_box[:2])
    host.save(tmp_path / "imgs" / "host.jpg", quality=90)
    return tmp_path / "imgs", true_box


def test_pasted_picture_pairs_with_its_source_and_keeps_the_region(tiny_run, tmp_path, one_thread):
    folder, true_box = _folder(tmp_path)
    trained = load_trained(tiny_run, "cpu")
    paths = sorted(folder.glob("*.jpg"))
    result = find_duplicates(trained, paths, -1e9, neighbours=1, workers=0, regions=8)  # every nearest pair
    best = max((s, pair) for pair, s in result.pairs.items() if "host" in pair)[1]
    assert best == ("R005", "host")
    who, box = result.boxes[best]
    assert who == "host" and box_iou(np.array([box]), np.array([true_box]))[0, 0] >= 0.5
    plain = find_duplicates(trained, paths, -1e9, neighbours=1, workers=0)
    assert plain.boxes == {}


def test_dedup_cli_with_regions_draws_the_region(tiny_run, tmp_path, one_thread):
    folder, _ = _folder(tmp_path)
    assert main(["dedup", str(folder), "--model", str(tiny_run), "--threshold=-1e9", "--k", "1", "--regions", "8",
                 "--out", str(tmp_path / "out")] + FAST) == 0
    groups = json.loads((tmp_path / "out" / "groups.json").read_text())["groups"]
    assert any({"host", "R005"} <= set(g) for g in groups)
    g = next(i for i, grp in enumerate(groups, 1) if "host" in grp)
    sheet = (tmp_path / "out" / "sheets" / f"group-{g:04d}.html").read_text()
    assert _thumb(folder / "R005.jpg") in sheet  # the source: drawn as is
    assert _thumb(folder / "host.jpg") not in sheet  # the host: with the matching region drawn on it
