import numpy as np
import pytest

from vsearch.errors import DataError
from vsearch.index import Catalog, ExactIndex


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_exact_index_search_add_remove():
    index = ExactIndex(2)
    index.add(["a", "b", "c"], unit([[1, 0], [0, 1], [1, 1]]))
    scores, ids = index.search(unit([[1, 0.1]]), 2)
    assert ids == [["a", "c"]] and scores[0, 0] > scores[0, 1]
    assert index.remove(["a", "zzz"]) == 1
    assert index.search(unit([[1, 0.1]]), 5)[1] == [["c", "b"]]
    with pytest.raises(ValueError, match="duplicate"):
        index.add(["b"], unit([[1, 0]]))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add(["x", "y"], unit([[1, 0]]))


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
