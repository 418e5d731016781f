import numpy as np
import pytest

from vsearch.errors import DataError
from vsearch.index import Catalog, FaissIndex, choose_kind, measure_recall, recall_at_k


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


def test_hnsw_round_trip_keeps_graph(tmp_path):
    vecs = unit(np.random.default_rng(2).normal(size=(300, 8)))
    catalog = Catalog(8, "fp", kind="hnsw")
    catalog.add([{"id": f"i{n}", "category": "x"} for n in range(300)], vecs)
    catalog.remove(["i0"])
    again = Catalog.load(catalog.save(tmp_path / "c.vsi"))
    assert again.index.kind == "hnsw" and len(again) == 299 and "i0" not in again
    assert again.index._faiss.ntotal == 299  # the stored graph, not a rebuild
    assert [m["id"] for m in again.search(vecs[5:6], 3)[0]] == [m["id"] for m in catalog.search(vecs[5:6], 3)[0]]


def test_catalog_round_trip_and_fingerprint(tmp_path):
    catalog = Catalog(2, "abc")
    catalog.add([{"id": 1, "path": "x.jpg", "category": "hat"}, {"id": "2", "category": "shoes"}],
                unit([[1, 0], [0, 1]]))
    path = catalog.save(tmp_path / "catalog.vsi")
    again = Catalog.load(path, expected_fingerprint="abc")
    top = again.search(unit([[0.9, 0.1]]), 1)[0][0]
    assert top["id"] == "1" and top["category"] == "hat" and 0.9 < top["score"] <= 1.0
    with pytest.raises(DataError, match="rebuild the index"):
        Catalog.load(path, expected_fingerprint="other")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "catalog.vsi"
    Catalog(2, "abc").save(path)
    before = path.read_bytes()
    broken = Catalog(2, "abc")
    broken.add([{"id": "x"}], unit([[1, 0]]))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        broken.save(path)
    assert path.read_bytes() == before  # the previous index is intact
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.vsi"]  # no temporary left behind


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no such catalog"):
        Catalog.load(tmp_path / "nope.vsi")
    (tmp_path / "bad.vsi").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a vsearch catalog"):
        Catalog.load(tmp_path / "bad.vsi")
    Catalog(2, "abc").save(tmp_path / "v1.vsi")
    raw = np.load(tmp_path / "v1.vsi")
    np.savez(tmp_path / "old.npz", vectors=raw["vectors"],
             meta=np.frombuffer(b'{"format": "vsearch-catalog/1"}', np.uint8))
    with pytest.raises(DataError, match="not a vsearch catalog index .format 'vsearch-catalog/1'"):
        Catalog.load(tmp_path / "old.npz")


def test_damaged_index_files_are_data_errors(tmp_path):
    catalog = Catalog(2, "abc")
    catalog.add([{"id": "x"}, {"id": "y"}], unit([[1, 0], [0, 1]]))
    whole = catalog.save(tmp_path / "whole.vsi").read_bytes()
    (tmp_path / "half.vsi").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(DataError, match="half.vsi: not a vsearch catalog"):
        Catalog.load(tmp_path / "half.vsi")
    with open(tmp_path / "array.vsi", "wb") as fh:  # a plain .npy under the index's name
        np.save(fh, np.zeros(3))
    with pytest.raises(DataError, match="array.vsi: not a vsearch catalog"):
        Catalog.load(tmp_path / "array.vsi")


def _with_header(path, tmp_path, change, arrays=None):
    """A copy of the index at ``path`` whose JSON header (or arrays) are changed."""
    import json

    with np.load(path) as data:
        stored = {name: data[name] for name in data.files}
    meta = json.loads(stored.pop("meta").tobytes())
    meta = change(meta)
    out = tmp_path / "edited.vsi"
    with open(out, "wb") as fh:
        np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **(stored if arrays is None else arrays))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda m: [m], "format 'list'"),
    (lambda m: {k: v for k, v in m.items() if k != "items"}, "no 'items' in the header"),
    (lambda m: {**m, "dim": "2"}, "'dim' is a str, expected a int"),
    (lambda m: {**m, "dim": True}, "'dim' is a bool"),
    (lambda m: {**m, "index": [1]}, "'index' is a list, expected a dict"),
    (lambda m: {**m, "items": [{"id": 3}, {"id": "y"}]}, "item 0 is not an object with a text id"),
    (lambda m: {**m, "items": ["x", "y"]}, "item 0 is not an object"),
    (lambda m: {**m, "model": "x"}, "'model' is a str"),
    (lambda m: {**m, "index": {"kind": "ivf"}}, "damaged catalog index"),
    (lambda m: {**m, "index": {"bogus": 1}}, "damaged catalog index"),
    (lambda m: {**m, "dim": 3}, "the header says 3"),
])
def test_a_damaged_header_is_not_an_index(tmp_path, change, message):
    catalog = Catalog(2, "abc")
    catalog.add([{"id": "x"}, {"id": "y"}], unit([[1, 0], [0, 1]]))
    edited = _with_header(catalog.save(tmp_path / "whole.vsi"), tmp_path, change)
    with pytest.raises(DataError, match=f"edited.vsi: .*{message}"):
        Catalog.load(edited)


def test_damaged_arrays_are_not_an_index(tmp_path):
    catalog = Catalog(2, "abc")
    catalog.add([{"id": "x"}, {"id": "y"}], unit([[1, 0], [0, 1]]))
    path = catalog.save(tmp_path / "whole.vsi")
    for arrays in ({}, {"vectors": np.zeros(4, np.float32)}, {"vectors": np.array([["a", "b"], ["c", "d"]])},
                   {"vectors": np.zeros((3, 2), np.float32)}):
        with pytest.raises(DataError, match="edited.vsi: damaged catalog index"):
            Catalog.load(_with_header(path, tmp_path, lambda m: m, arrays))


def test_save_onto_a_folder_is_a_data_error(tmp_path):
    (tmp_path / "taken.vsi").mkdir()
    with pytest.raises(DataError, match="taken.vsi: cannot write the catalog index"):
        Catalog(2, "abc").save(tmp_path / "taken.vsi")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.vsi"]  # no temporary left behind


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_search_among_ids_is_exact_over_them(kind):
    rng = np.random.default_rng(3)
    vecs = unit(rng.normal(size=(2000, 16)))
    ids = [str(i) for i in range(len(vecs))]
    index = FaissIndex(16, kind, hnsw_m=8, ef_search=16)
    index.add(ids, vecs)
    index.remove(["7"])
    among = ["3", "7", "11", "500", "1999", "unknown"]  # a removed and an unknown id are ignored
    query = vecs[:4]
    scores, found = index.search(query, 10, among=among)
    live = np.array([3, 11, 500, 1999])
    expected = live[np.argsort(-(query @ vecs[live].T), axis=1)]
    assert found == [[str(i) for i in row] for row in expected]
    assert np.allclose(scores, np.sort(query @ vecs[live].T, axis=1)[:, ::-1], atol=1e-5)
    assert index.search(query, 3, among=[])[1] == [[], [], [], []]


def test_catalog_category_ids_follow_changes():
    catalog = Catalog(2, "abc")
    catalog.add([{"id": "a", "category": "hats"}, {"id": "b", "category": "shoes"}], unit([[1, 0], [0, 1]]))
    assert catalog.category_ids("hats") == ["a"] and catalog.category_ids("bags") == []
    catalog.add([{"id": "c", "category": "hats"}], unit([[1, 1]]))
    assert catalog.category_ids("hats") == ["a", "c"]
    catalog.remove(["a"])
    assert catalog.category_ids("hats") == ["c"]
    assert [m["id"] for m in catalog.search(unit([[1, 0]]), 5, among=catalog.category_ids("hats"))[0]] == ["c"]
