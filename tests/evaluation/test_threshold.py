"""The copy verdict lives in one place: `is_copy` for a calibrated threshold, a user's number, or none."""

import numpy as np
import pytest

from qkcopy.errors import ThresholdError
from qkcopy.evaluation.threshold import Threshold, any_copy, is_copy, threshold_score


def _calibrated(score):
    return Threshold(score, 0.9, 0.5, 0.9, True, "abc", 10, "bench")


def test_is_copy_at_and_around_the_threshold():
    t = _calibrated(-1.5)
    assert is_copy(-1.5, t) is True and is_copy(-1.50001, t) is False and is_copy(-0.2, t) is True
    assert is_copy(-1.5, -1.5) is True and is_copy(-2.0, -1.5) is False
    assert is_copy(-1.0, None) is None
    np.testing.assert_array_equal(is_copy(np.array([-2.0, -1.5, -1.0]), t), [False, True, True])


def test_a_users_number_is_checked_like_a_threshold_file():
    assert threshold_score(-0.5) == -0.5 and threshold_score(_calibrated(-1.0)) == -1.0
    assert threshold_score(None) is None
    for bad in (0.5, float("nan"), float("inf"), "x", True):
        with pytest.raises(ThresholdError):
            is_copy(-1.0, bad)


def test_an_image_is_a_copy_when_any_match_is():
    assert any_copy([-3.0, -1.0], -1.5) is True and any_copy([-3.0, -2.0], -1.5) is False
    assert any_copy([], -1.5) is False and any_copy([-1.0], None) is None and any_copy([], None) is None
