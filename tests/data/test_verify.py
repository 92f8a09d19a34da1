"""Local-feature verification: a known homography is recovered (inliers, confidence, the copy's outline in the
query), an unrelated picture is not verified, and re-scoring touches only the top k per query."""

import cv2
import numpy as np
import pytest
from PIL import Image
from testkit import textured_picture

from qkcopy.data.isc_csv import Predictions
from qkcopy.data.verify import VerifyConfig, verify_pair, verify_predictions


def test_known_homography_is_recovered():
    ref = textured_picture(0)
    h = np.array([[0.55, 0.06, 140.0], [-0.04, 0.5, 90.0], [0.0002, 0.0001, 1.0]])  # reference → query
    host = np.asarray(textured_picture(1, (560, 420)))
    warped = cv2.warpPerspective(np.asarray(ref), h, (560, 420))
    inside = cv2.warpPerspective(np.full((240, 300), 255, np.uint8), h, (560, 420)) > 0
    query = Image.fromarray(np.where(inside[..., None], warped, host))
    v = verify_pair(query, ref)
    corners = np.array([[0, 0], [300, 0], [300, 240], [0, 240]], np.float64).reshape(-1, 1, 2)
    true_quad = cv2.perspectiveTransform(corners, h).reshape(4, 2)
    assert v.inliers >= 20 and v.confidence > 0.8
    assert np.abs(v.quad - true_quad).max() < 6.0, (v.quad, true_quad)  # pixels
    x0, y0 = true_quad.min(axis=0)
    x1, y1 = true_quad.max(axis=0)
    assert np.allclose(v.box, (x0, y0, x1, y1), atol=6)


def test_unrelated_picture_is_not_verified():
    v = verify_pair(textured_picture(2), textured_picture(3))
    assert v.confidence == 0.0 and v.quad is None and v.box is None


def test_rescoring_touches_only_the_top_k(tmp_path):
    ref, other = textured_picture(0), textured_picture(4)
    query = textured_picture(5, (400, 320))
    query.paste(ref.resize((200, 160)), (100, 80))
    for name, img in (("q", query), ("r", ref), ("o", other)):
        img.save(tmp_path / f"{name}.png")
    paths = {k: tmp_path / f"{k}.png" for k in "qro"}
    preds = Predictions(np.array(["q", "q"]), np.array(["o", "r"]), np.array([-1.0, -1.5]))
    cfg = VerifyConfig(k=1, bonus=2.0)
    rescored, found = verify_predictions(preds, {"q": paths["q"]}, {"r": paths["r"], "o": paths["o"]}, cfg)
    assert list(found) == [("q", "o")]  # only the best-scored candidate of the query
    assert rescored.scores.tolist() == [-1.0, -1.5]  # "o" is not a copy: no bonus
    rescored, found = verify_predictions(preds, {"q": paths["q"]}, {"r": paths["r"], "o": paths["o"]},
                                         VerifyConfig(k=2, bonus=2.0))
    assert found[("q", "r")].confidence > 0.5 and rescored.scores[1] > rescored.scores[0]


def test_config_bounds_refused():
    with pytest.raises(ValueError, match="VerifyConfig"):
        VerifyConfig(ratio=1.5)
