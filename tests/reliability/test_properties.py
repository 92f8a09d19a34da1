"""Property tests (hypothesis): the image loader, µAP and config overrides on inputs nobody wrote by hand."""

import io
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qkcopy.config import load_config, to_dict
from qkcopy.data.images import ImageError, load_image
from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.errors import ConfigError
from qkcopy.evaluation.metrics import isc_metrics

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _real_files() -> dict[str, bytes]:
    """One real picture in each of the formats the loader meets most: JPEG (progressive too), PNG, WebP, GIF."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))
    out = {}
    for name, kwargs in (("JPEG", dict(quality=85)), ("JPEG-progressive", dict(quality=85, progressive=True)),
                         ("PNG", {}), ("WEBP", {}), ("GIF", {})):
        buf = io.BytesIO()
        img.save(buf, format=name.split("-")[0], **kwargs)
        out[name] = buf.getvalue()
    return out


REAL = _real_files()


def _load_bytes(tmp_path, data: bytes, name: str = "x.jpg"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_image(path)


@FAST
@given(data=st.binary(max_size=4096))
def test_loader_on_random_bytes_raises_only_image_error(tmp_path, data):
    try:
        img = _load_bytes(tmp_path, data)
    except ImageError as err:
        assert str(tmp_path / "x.jpg") in str(err) and err.reason
    else:  # random bytes that happen to decode are still a proper RGB image
        assert img.mode == "RGB" and img.width > 0 and img.height > 0


@FAST
@given(kind=st.sampled_from(sorted(REAL)), cut=st.floats(0, 1, exclude_max=True), seed=st.integers(0, 2**16),
       flips=st.integers(0, 8))
def test_loader_on_truncated_or_damaged_real_files_raises_only_image_error(tmp_path, kind, cut, seed, flips):
    data = bytearray(REAL[kind][:int(len(REAL[kind]) * cut)])
    rng = random.Random(seed)
    for _ in range(flips if data else 0):  # and a few flipped bytes in what is left
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    try:
        img = _load_bytes(tmp_path, bytes(data))
    except ImageError as err:
        assert err.path == tmp_path / "x.jpg"
    else:
        assert img.mode == "RGB" and img.size == (64, 48)


@FAST
@given(pick=st.integers(0, 3), cut=st.floats(0, 1, exclude_max=True))
def test_loader_on_truncated_development_photos_raises_only_image_error(shared_photos, tmp_path, pick, cut):
    source = sorted((shared_photos / "train").glob("*.jpg"))[pick * 1000]  # real camera JPEGs, when present
    data = source.read_bytes()
    try:
        img = _load_bytes(tmp_path, data[:int(len(data) * cut)])
    except ImageError as err:
        assert err.path == tmp_path / "x.jpg"
    else:
        assert img.mode == "RGB" and img.size == load_image(source).size


# --- µAP ---

@st.composite
def ranked_predictions(draw):
    """A ground truth over Nq queries (some without a copy) and up to 4 scored predictions per query."""
    nq = draw(st.integers(1, 6))
    refs = [f"R{i}" for i in range(6)]
    truth = {f"Q{i}": draw(st.sampled_from([None] + refs)) for i in range(nq)}
    if all(r is None for r in truth.values()):
        truth["Q0"] = "R0"
    rows = []
    for q in truth:
        for r in draw(st.lists(st.sampled_from(refs), max_size=4, unique=True)):
            rows.append((q, r, draw(st.floats(-10, 0, allow_nan=False))))
    return GroundTruth(truth), rows


def _preds(rows) -> Predictions:
    return Predictions(np.array([r[0] for r in rows], dtype=str), np.array([r[1] for r in rows], dtype=str),
                       np.array([r[2] for r in rows], dtype=np.float64))


@FAST
@given(case=ranked_predictions(), seed=st.integers(0, 2**16))
def test_micro_ap_is_in_unit_interval_and_invariant_to_prediction_order(case, seed):
    gt, rows = case
    if not rows:
        return
    ap = isc_metrics(_preds(rows), gt).micro_ap
    assert 0.0 <= ap <= 1.0 and math.isfinite(ap)
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    assert isc_metrics(_preds(shuffled), gt).micro_ap == pytest.approx(ap, abs=1e-12)


@FAST
@given(case=ranked_predictions(), margin=st.floats(0.001, 5))
def test_micro_ap_never_rises_when_a_false_pair_is_added_above_the_true_ones(case, margin):
    gt, rows = case
    if not rows:
        return
    before = isc_metrics(_preds(rows), gt).micro_ap
    taken = {(q, r) for q, r, _ in rows}
    false = [(q, r) for q in gt.queries for r in (f"R{i}" for i in range(6))
             if gt.matches[q] != r and (q, r) not in taken]
    if not false:
        return
    q, r = false[0]
    top = max(s for _, _, s in rows)
    after = isc_metrics(_preds(rows + [(q, r, top + margin)]), gt).micro_ap
    assert after <= before + 1e-12


# --- config overrides ---

KEYS = sorted(k for k, v in (
    (f"{section}.{key}" if isinstance(values, dict) else section, v)
    for section, values in to_dict(load_config("cpu")).items()
    for key, v in (values.items() if isinstance(values, dict) else [(None, values)])))
VALUES = st.one_of(st.integers(-3, 100), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.sampled_from(["null", "adam", "sgd", "[Q, K]", "[X]", "[]", "{a: 1}", "fast", "3e-5", "[",
                                    "'", "Q", "medium", "~"]))


@FAST
@given(key=st.sampled_from(KEYS + ["loss", "nope", "loss.nope", "loss.tau.x", ""]), value=VALUES)
def test_random_overrides_give_a_value_or_a_config_error_naming_the_key(key, value):
    raw = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)
    raw = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}.get(raw, raw)
    try:
        cfg = load_config("cpu", [f"{key}={raw}"])
    except ConfigError as err:
        assert "\n" not in str(err)
        assert (key and key.split(".")[0] in str(err)) or "key=value" in str(err), (key, raw, str(err))
    else:
        assert load_config("cpu", [f"{key}={raw}"]) == cfg  # a value: the same one every time
        assert cfg.loss.tau > 0 and cfg.data.batch_size >= 1 and cfg.optim.lr > 0
