"""Region descriptors: the whole-image rows are exactly `describe`'s, regions follow each image, a smaller
region side changes only the region rows."""

import numpy as np
from testkit import draw_images

from qkcopy.model.trained import load_trained


def test_whole_rows_equal_describe_and_region_size_only_touches_regions(tiny_run, tmp_path, one_thread):
    paths = draw_images(tmp_path, 3, seed=7, size=120)
    trained = load_trained(tiny_run, "cpu")
    plain = trained.describe("query", paths, workers=0)
    table = trained.describe_regions(paths, 3, batch_size=5, workers=0)
    assert table.ids == plain.ids and table.per_image == 4
    assert table.owner.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert table.boxes[::4].tolist() == [[0, 0, 120, 120]] * 3  # each image's first row is the whole
    np.testing.assert_allclose(table.whole().vectors, plain.vectors, rtol=1e-5, atol=1e-6)
    small = trained.describe_regions(paths, 3, batch_size=5, workers=0, region_size=32)
    first = table.owner != np.r_[-1, table.owner[:-1]]
    np.testing.assert_allclose(small.vectors[first], table.vectors[first], rtol=1e-5, atol=1e-6)
    assert not np.allclose(small.vectors[~first], table.vectors[~first])
    assert small.boxes.tolist() == table.boxes.tolist()
