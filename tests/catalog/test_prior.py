"""The category prior of category=auto (vsearch.catalog.prior)."""

from vsearch.catalog.prior import predict_category


def test_predict_category():
    matches = [
        {"id": "a", "category": "x", "score": 0.9},
        {"id": "b", "category": "y", "score": 0.89},
        {"id": "c", "category": "y", "score": 0.88},
    ]
    assert predict_category(matches)[0] == "y" and 0.5 < predict_category(matches)[1] < 0.7
    assert predict_category(matches, temperature=0.001)[0] == "x"
    assert predict_category([]) == ("", 0.0)
