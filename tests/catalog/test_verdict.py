"""The calibrated verdict (vsearch.catalog.verdict): a calibration applied to a ranked list."""

import pytest

from vsearch.catalog.verdict import ranked_features, verdicts


def test_verdicts_follow_the_thresholds():
    t = {"exact": 0.9, "none": 0.2}
    assert verdicts([0.95, 0.5, 0.1, 0.95], [0.99, 0.5, 0.1, 0.1], t).tolist() == [
        "exact",
        "similar",
        "none",
        "similar",
    ]  # the last: both heads claim it
    assert verdicts([0.99], [0.0], {"exact": None, "none": None}).tolist() == ["similar"]


def test_ranked_features_gap_is_to_the_next_product():
    assert ranked_features([0.9, 0.85, 0.6], ["a", "a", "b"]) == pytest.approx((0.9, 0.3))
    assert ranked_features([0.9, 0.8], ["a", "a"]) == pytest.approx((0.9, 0.1))  # only a lower bound
    assert ranked_features([0.9], ["a"]) == (0.9, 0.0)
