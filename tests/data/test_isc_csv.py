"""The ISC2021 CSV types: validation on construction, round trips, DISC21's ground truth, errors naming the line."""

import numpy as np
import pytest

from qkcopy.data.isc_csv import GroundTruth, Predictions


def preds(*rows) -> Predictions:
    q, r, s = zip(*rows) if rows else ((), (), ())
    return Predictions(np.array(q, dtype=str), np.array(r, dtype=str), np.array(s, dtype=np.float64))


def test_predictions_validation():
    with pytest.raises(ValueError, match="differ in length"):
        Predictions(np.array(["q"]), np.array(["r", "s"]), np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        Predictions(np.array([["q"]]), np.array([["r"]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        Predictions(np.array(["q"]), np.array(["r"]), np.array([np.nan]))
    with pytest.raises(ValueError, match="strings"):
        Predictions(np.array([1]), np.array(["r"]), np.array([1.0]))


def test_predictions_csv_round_trip(tmp_path):
    p = preds(("Q00001", "R000002", -0.123456789012345), ("Q00001", "R9", 1e-30), ("Q2", "R000002", 3.0))
    p.to_csv(tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "query_id,reference_id,score"
    back = Predictions.from_csv(tmp_path / "p.csv")
    assert back.query_ids.tolist() == p.query_ids.tolist()
    assert back.reference_ids.tolist() == p.reference_ids.tolist()
    assert back.scores.tolist() == p.scores.tolist()  # exact, not rounded
    assert len(back) == 3
    assert [f.name for f in tmp_path.iterdir()] == ["p.csv"]  # no temp file left


def test_predictions_csv_without_header_and_bad_rows(tmp_path):
    (tmp_path / "a.csv").write_text("Q1,R1,0.5\nQ2,R3,-1.25\n")
    p = Predictions.from_csv(tmp_path / "a.csv")
    assert p.scores.tolist() == [0.5, -1.25] and p.query_ids.tolist() == ["Q1", "Q2"]
    (tmp_path / "b.csv").write_text("query_id,reference_id,score\nQ1,R1,0.5\nQ2,R3,abc\n")
    with pytest.raises(ValueError, match=r"b.csv:3: score 'abc'"):
        Predictions.from_csv(tmp_path / "b.csv")
    with pytest.raises(FileNotFoundError):
        Predictions.from_csv(tmp_path / "missing.csv")


def test_ground_truth_reads_disc21_format(tmp_path):
    path = tmp_path / "public_ground_truth.csv"
    path.write_text("query_id,reference_id\nQ00000,\nQ00001,\nQ00003,R326040\nQ00004,R852827\n")
    gt = GroundTruth.from_csv(path)
    assert gt.queries == ("Q00000", "Q00001", "Q00003", "Q00004")
    assert gt.matches["Q00000"] is None and gt.matches["Q00003"] == "R326040"
    assert gt.n_positives == 2 and gt.pairs == [("Q00003", "R326040"), ("Q00004", "R852827")]
    gt.to_csv(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == path.read_text()


def test_ground_truth_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("q1,r1\nq1,r2\n")
    with pytest.raises(ValueError, match=r"dup.csv:2: query q1 is listed twice"):
        GroundTruth.from_csv(tmp_path / "dup.csv")
    (tmp_path / "bad.csv").write_text("q1,r1,0.3\n")
    with pytest.raises(ValueError, match=r"bad.csv:1"):
        GroundTruth.from_csv(tmp_path / "bad.csv")
