import numpy as np
import pytest

from vsearch.stores.rows import FaissIndex, calibration_problem, choose_kind, measure_recall, recall_at_k


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_index_search_add_remove(kind):
    index = FaissIndex(2, kind)
    index.add(["a", "b", "c"], unit([[1, 0], [0, 1], [1, 1]]))
    scores, ids = index.search(unit([[1, 0.1]]), 2)
    assert ids == [["a", "c"]] and scores[0, 0] > scores[0, 1]
    assert np.isclose(scores[0, 0], unit([[1, 0.1]])[0] @ np.array([1, 0]), atol=1e-6)
    assert index.remove(["a", "zzz"]) == 1 and len(index) == 2
    assert index.search(unit([[1, 0.1]]), 5)[1] == [["c", "b"]]  # removed rows are skipped
    index.add(["a"], unit([[1, 0]]))  # an id can come back after removal
    assert index.search(unit([[1, 0.1]]), 1)[1] == [["a"]]
    with pytest.raises(ValueError, match="duplicate"):
        index.add(["b"], unit([[1, 0]]))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add(["x", "y"], unit([[1, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["x"], np.array([[np.nan, 1]], np.float32))


def test_remove_compacts_and_empty_search():
    index = FaissIndex(3)
    vecs = unit(np.random.default_rng(0).normal(size=(8, 3)))
    index.add([str(i) for i in range(8)], vecs)
    index.remove(["0", "1", "2"])  # over a quarter dead -> rebuilt without them
    assert index._dead == set() and len(index.vectors) == 5 and index.ids == ["3", "4", "5", "6", "7"]
    assert index.search(vecs[3], 1)[1] == [["3"]]
    index.remove(index.ids)
    scores, ids = index.search(vecs[:2], 3)
    assert scores.shape == (2, 0) and ids == [[], []]


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 16))
    vecs = unit(centres[rng.integers(0, 20, 3000)] + 0.5 * rng.normal(size=(3000, 16)))
    index = FaissIndex(16, "hnsw", hnsw_m=16, ef_search=64)
    index.add([str(i) for i in range(len(vecs))], vecs)
    recall = measure_recall(index, vecs[:200], 10)
    assert 0.9 <= recall <= 1.0
    assert recall_at_k([["a", "b"]], [["a", "c"]], 2) == 0.5
    assert choose_kind("auto", 10) == "exact" and choose_kind("auto", 10**6) == "hnsw"
    with pytest.raises(ValueError, match="index kind"):
        choose_kind("ivf", 10)


def test_hnsw_compact_keeps_the_live_rows():
    vecs = unit(np.random.default_rng(2).normal(size=(300, 8)))
    index = FaissIndex(8, "hnsw", hnsw_m=8)
    index.add([f"i{n}" for n in range(300)], vecs)
    before = index.search(vecs[5:6], 3)[1]
    index.remove(["i0"])
    assert index._dead == {0} and index._faiss.ntotal == 300  # marked dead, not rebuilt
    index.compact()
    assert index._dead == set() and index._faiss.ntotal == 299 and "i0" not in index.ids
    assert index.search(vecs[5:6], 3)[1] == before
    assert index.params() == {"kind": "hnsw", "hnsw_m": 8, "ef_construction": 80, "ef_search": 256}


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        FaissIndex(0)
    with pytest.raises(ValueError, match="index kind"):
        FaissIndex(2, "ivf")
    assert FaissIndex(2, "auto").kind == "exact"


def _calibration(fingerprint="abc", **change):
    model = {"method": "platt", "mean": [0.5, 0.1], "scale": [0.1, 0.05], "coef": [2.0, 1.0], "intercept": -1.0}
    head = {"global": model, "categories": {"hats": model}}
    return {
        "fingerprint": fingerprint,
        "heads": {"exact": head, "present": head},
        "thresholds": {"exact": 0.9, "none": 0.2},
        **change,
    }


def test_a_whole_calibration_has_no_problem():
    assert calibration_problem(_calibration(), "abc") == ""
    isotonic = {
        **_calibration()["heads"]["exact"]["global"],
        "method": "isotonic",
        "edges": [0.1, 0.5],
        "values": [0.0, 1.0],
    }
    heads = {"exact": {"global": isotonic, "categories": {}}, "present": _calibration()["heads"]["present"]}
    assert calibration_problem(_calibration(heads=heads), "abc") == ""


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fingerprint": "other"}, "was made with model other"),
        ({"heads": None}, "has no heads or thresholds"),
        ({"thresholds": []}, "has no heads or thresholds"),
        ({"heads": {"exact": {"global": {}, "categories": {}}}}, "damaged 'exact' model"),
        ({"heads": {"present": {}}}, "has no 'exact' head"),
        ({"thresholds": {"exact": "0.9"}}, "'exact' threshold that is not a number"),
        ({"thresholds": {"none": True}}, "'none' threshold that is not a number"),
    ],
)
def test_a_damaged_calibration_is_named(change, message):
    assert message in calibration_problem(_calibration(**change), "abc")


def test_a_damaged_model_inside_a_head_is_named():
    calibration = _calibration()
    isotonic = {**calibration["heads"]["exact"]["global"], "method": "isotonic", "edges": [0.1], "values": [0.0, 1.0]}
    calibration["heads"]["present"] = {
        "global": calibration["heads"]["present"]["global"],
        "categories": {"hats": isotonic},
    }  # edges and values of unequal length
    assert "damaged 'present' model" in calibration_problem(calibration, "abc")
    calibration["heads"]["present"]["categories"]["hats"] = {**isotonic, "edges": [0.1, 0.5], "coef": [True, 1.0]}
    assert "damaged 'present' model" in calibration_problem(calibration, "abc")
