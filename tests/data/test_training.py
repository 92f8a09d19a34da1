"""Training items and their order: batches are a pure function of the step, items of (index, seed)."""

from qkcopy.data.training import PhaseBatches


def test_phase_batches_are_a_pure_function_of_the_step():
    full = list(PhaseBatches(50, 8, 10, run_seed=3, phase=1, queries=True))
    assert list(PhaseBatches(50, 8, 10, run_seed=3, phase=1, queries=True, start=4)) == full[4:]
    first_epoch = [i for batch in full[:6] for i, _ in batch]
    assert len(set(first_epoch)) == 48  # one epoch visits distinct images
    assert full != list(PhaseBatches(50, 8, 10, run_seed=3, phase=2, queries=True))


def test_originals_and_queries_as_items(tmp_path):
    import torch
    from testkit import draw_images

    from qkcopy.data.training import TrainImages, query_seed
    from qkcopy.data.transforms import gist_input, image_pair, model_input

    paths = draw_images(tmp_path, 4, seed=1, size=60)
    items = TrainImages(paths, image_size=32, strength="light", pairs=True)
    index, pixels, gist_pixels = TrainImages(paths, 32, "light")[(2, None)]  # the original image
    assert index == 2 and pixels.shape == (3, 32, 32) and gist_pixels.shape == (3, 32, 32)
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0 and float(gist_pixels.max()) > 1.0
    seed = query_seed(run_seed=0, phase=0, epoch=0, index=2)
    a, b = items[(2, seed)], items[(2, seed)]
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))  # a pure function of the seed
    assert torch.equal(a[3], pixels)  # pairs carry the original after the query
    assert not torch.equal(a[1], pixels)  # the query is an edited copy
    assert query_seed(0, 0, 0, 2) != query_seed(0, 0, 1, 2) != query_seed(0, 1, 0, 2)
    from PIL import Image

    img = Image.new("RGB", (64, 40), (10, 200, 30))
    assert model_input(img, 16).shape == (3, 16, 16) and gist_input(img).shape == (3, 32, 32)
    assert torch.allclose(gist_input(img)[:, 0, 0], torch.tensor([10.0, 200.0, 30.0]))  # 0..255 RGB
    grey = image_pair(img.convert("L"), 16)  # any mode becomes RGB: three equal channels
    assert grey[0].shape == (3, 16, 16) and torch.equal(grey[1][0], grey[1][1]) and torch.equal(grey[1][1], grey[1][2])


def test_op_weights_reach_the_training_queries(tmp_path):
    import torch
    from testkit import draw_images

    from qkcopy.data.training import TrainImages, query_seed

    paths = draw_images(tmp_path, 3, seed=2, size=60)
    seeds = [query_seed(0, 0, 0, i) for i in range(3)]
    plain = TrainImages(paths, 32, "light", broad=True)
    only_tone = TrainImages(paths, 32, "light", broad=True, weights={op: 0.0 for op in _all_ops()} | {"tone_curve": 1.0})
    assert only_tone.weights["tone_curve"] == 1.0
    assert any(not torch.equal(plain[(i, s)][1], only_tone[(i, s)][1]) for i, s in enumerate(seeds))


def _all_ops():
    from qkcopy.data.augment import OPS
    from qkcopy.data.extra_edits import EXTRA_OPS

    return {**OPS, **EXTRA_OPS}
