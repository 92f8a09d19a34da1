"""Region proposals: the whole image first, a pasted picture's rectangle found from its edges, bounded count."""

import numpy as np
import pytest
from PIL import Image
from testkit import draw_images

from qkcopy.data.regions import box_iou, grid_boxes, propose_regions


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 5]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.25]])


def test_grid_is_half_overlapping_and_inside():
    g = grid_boxes(200, 100, scales=(0.5,))
    assert len(g) == 9  # 3 positions per axis
    assert g[:, [0, 1]].min() == 0 and g[:, 2].max() == 200 and g[:, 3].max() == 100
    np.testing.assert_allclose(g[1], [50, 0, 150, 50])


@pytest.mark.parametrize("n", [0, 1, 5, 12])
def test_whole_image_first_and_at_most_n(tmp_path, n):
    img = Image.open(draw_images(tmp_path, 1, seed=2, size=150)[0])
    boxes = propose_regions(img, n)
    assert boxes[0].tolist() == [0, 0, 150, 150]
    assert 1 <= len(boxes) <= n + 1 and (n == 0 or len(boxes) == n + 1)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, [2, 3]].max() <= 150
    assert propose_regions(img, n).tolist() == boxes.tolist()  # deterministic


@pytest.mark.parametrize("where", [(130, 40), (20, 150), (240, 100)])
def test_pasted_picture_is_proposed_from_its_edges(tmp_path, where):
    host_path, pic_path = draw_images(tmp_path, 2, seed=5, size=200)
    host = Image.open(host_path).convert("RGB").resize((420, 320))
    pic = Image.open(pic_path).convert("RGB").resize((160, 150))
    host.paste(pic, where)
    true = np.array([[where[0], where[1], where[0] + 160, where[1] + 150]])
    boxes = propose_regions(host, 4)
    assert box_iou(boxes[1:2], true)[0, 0] >= 0.9  # the first region is the pasted picture


def test_negative_count_refused():
    with pytest.raises(ValueError, match="regions"):
        propose_regions(Image.new("RGB", (50, 50)), -1)


def _naive_content_box(rgb, tolerance=12.0):
    """content_box written plainly: a row or column is margin when every pixel is within tolerance of the corner."""
    h, w, _ = rgb.shape
    corner = rgb[0, 0].astype(float)
    far = [[max(abs(float(v) - c) for v, c in zip(rgb[y, x], corner)) > tolerance for x in range(w)] for y in range(h)]
    rows = [y for y in range(h) if any(far[y])]
    cols = [x for x in range(w) if any(far[y][x] for y in range(h))]
    if not rows:
        return None
    box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    big = box[2] - box[0] >= 0.2 * w and box[3] - box[1] >= 0.2 * h
    return box if box != (0, 0, w, h) and big else None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_content_box_matches_a_naive_reference(seed):
    from qkcopy.data.regions import content_box

    rng = np.random.default_rng(seed)
    rgb = np.full((24, 30, 3), rng.integers(0, 256, 3), np.uint8)  # a uniform margin colour
    x0, y0 = rng.integers(1, 8, 2)
    rgb[y0:y0 + 12, x0:x0 + 15] = rng.integers(0, 256, (12, 15, 3))  # the content
    rgb[0, 0] = np.clip(rgb[0, 0].astype(int) + 12, 0, 255)  # within tolerance at the corner: edge cases
    assert content_box(rgb) == _naive_content_box(rgb)
