import json

import numpy as np
import pytest
from PIL import Image

from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.report.report import (BLUE, BORDER, GREEN, GREY, RED, SHEET_COLUMNS, cell_origin, format_table, loss_curves,
                           pick_examples, read_train_log, retrieval_sheet, write_report)


def _log(path, segments=("Q1", "K1"), steps=10):
    with open(path, "w") as f:
        for p, seg in enumerate(segments):
            for s in range(steps):
                g = p * steps + s
                f.write(json.dumps(dict(segment=seg, phase=p, step=s, global_step=g, loss=2.0 - 0.05 * g,
                                        loss_pos=0.5 - 0.01 * g, loss_neg=1.5 - 0.04 * g)) + "\n")
    return path


def test_loss_curves_png_size_and_log_reading(tmp_path):
    log = _log(tmp_path / "train_log.jsonl")
    with open(log, "a") as f:  # step 3 logged again after a resume: the later record wins
        f.write(json.dumps(dict(segment="Q1", global_step=3, loss=9.0, loss_pos=1.0, loss_neg=8.0)) + "\n")
    records = read_train_log(log)
    assert [r["global_step"] for r in records] == list(range(20)) and records[3]["loss"] == 9.0
    png = loss_curves(log, tmp_path / "out" / "loss.png")
    with Image.open(png) as im:
        assert im.size == (800, 450) and im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels.std(axis=(0, 1)) > 5).all()  # something was drawn
    (tmp_path / "bad.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_train_log(tmp_path / "bad.jsonl")


@pytest.fixture
def case(tmp_path):
    paths = {}
    for i, name in enumerate(["q1", "q2", "q3", "q4", "r1", "r2", "r3", "r4"]):
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (40 + 10 * i, 60), (30 * i, 255 - 30 * i, 100)).save(paths[name])
    preds = Predictions(np.array(["q1", "q1", "q2", "q2", "q3", "q4"]), np.array(["r1", "r2", "r3", "r2", "r1", "r3"]),
                        np.array([-0.1, -0.5, -0.2, -0.3, -0.9, -0.4]))
    gt = GroundTruth({"q1": "r1", "q2": "r2", "q3": "r4", "q4": None})
    queries = {k: v for k, v in paths.items() if k.startswith("q")}
    refs = {k: v for k, v in paths.items() if k.startswith("r")}
    return queries, refs, preds, gt


def test_pick_examples_mixes_hits_and_misses(case):
    _, _, preds, gt = case
    assert pick_examples(preds, gt, 2) == ["q1", "q2"]  # one found at rank 1, one missed
    assert pick_examples(preds, gt, 8) == ["q1", "q2", "q3"]  # distractor q4 never shown
    assert pick_examples(preds, gt, 1) == ["q2"]


def test_retrieval_sheet_frames_correct_matches_green(case, tmp_path):
    queries, refs, preds, gt = case
    png = retrieval_sheet(queries, refs, preds, gt, tmp_path / "sheet.png", examples=["q1", "q2", "q3"])
    with Image.open(png) as im:
        assert im.size == (cell_origin(0, len(SHEET_COLUMNS))[0], cell_origin(3, 0)[1])
        sheet = im.convert("RGB")

    def frame(row, col):  # a pixel inside the border band, left edge, half-way down
        x, y = cell_origin(row, col)
        return sheet.getpixel((x + BORDER // 2, y + 60))

    assert frame(0, 0) == GREY and frame(0, 1) == GREEN and frame(0, 2) == RED  # q1: r1 right, r2 wrong
    assert frame(1, 1) == RED and frame(1, 2) == GREEN  # q2: true r2 at rank 2
    assert frame(1, 4) == (255, 255, 255)  # found in the top 3: no extra column
    assert frame(2, 1) == RED and frame(2, 4) == BLUE  # q3: r4 not retrieved, shown last
    x, y = cell_origin(0, 1)  # the thumbnail of r1 sits inside the green frame
    assert sheet.getpixel((x + BORDER + 56, y + BORDER + 56)) == (120, 135, 100)
    with pytest.raises(ValueError, match="no query"):
        retrieval_sheet(queries, refs, preds, GroundTruth({"q4": None}), tmp_path / "none.png")


def test_table_and_report(tmp_path):
    rows = [dict(method="gist", micro_ap=0.1234, recall_at_p90=0.0, recall_at_1=0.5, recall_at_10=0.75, seconds=12.4),
            dict(method="qk K1", micro_ap=0.5, recall_at_p90=None, recall_at_1=0.6)]
    md = format_table(rows)
    assert md.splitlines()[2] == "| gist | 0.123 | 0.000 | 0.500 | 0.750 | 12 s |"
    assert md.splitlines()[3] == "| qk K1 | 0.500 | – | 0.600 | – | – |"
    text = format_table(rows, markdown=False).splitlines()
    assert text[0].startswith("method") and "0.123" in text[2] and len({len(t) for t in text}) == 1
    (tmp_path / "figs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "figs" / "pr.png")
    report = write_report(tmp_path, rows, {"PR curves": tmp_path / "figs" / "pr.png"}, title="T", notes=["hello"])
    body = report.read_text()
    assert body.startswith(f"# T\n\n{md}\n\nhello\n") and "![PR curves](figs/pr.png)" in body
    page = (tmp_path / "report.html").read_text()
    assert "<td>qk K1</td><td>0.500</td>" in page and "src='figs/pr.png'" in page
