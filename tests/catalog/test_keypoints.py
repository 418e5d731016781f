"""vsearch.catalog.keypoints: re-rank keypoints stored with the catalog, and the Searcher reading them."""

import os

import numpy as np
import pytest
from conftest import ColourEmbedder
from PIL import Image
from test_rerank import textured, warped

from vsearch.catalog import keypoints as module
from vsearch.catalog.building import add_products, build_catalog
from vsearch.catalog.keypoints import KeypointStore, file_stamp, index_keypoints, keypoints_folder, setting
from vsearch.catalog.manifest import Photo
from vsearch.catalog.rerank import local_features
from vsearch.catalog.search import Searcher
from vsearch.config import RerankConfig
from vsearch.stores import build_store


@pytest.fixture
def files(tmp_path):
    """Three textured photos on disk."""
    out = {}
    for name, seed in (("a", 21), ("b", 22), ("c", 23)):
        out[name] = tmp_path / f"{name}.png"
        Image.fromarray(textured(seed)).save(out[name])
    return out


def entry(photo_id, path, config=RerankConfig()):
    return photo_id, file_stamp(path), local_features(np.asarray(Image.open(path)), config)


def same(a, b) -> bool:
    return a.size == b.size and np.array_equal(a.points, b.points) and np.array_equal(a.descriptors, b.descriptors)


def test_the_folder_is_beside_a_local_store_and_none_for_a_server():
    assert keypoints_folder("faiss:/x/catalog.vsi") == module.Path("/x/catalog.vsi.keypoints")
    assert keypoints_folder("/x/catalog.vsi") == module.Path("/x/catalog.vsi.keypoints")
    assert keypoints_folder("milvus:/x/shop.db") == module.Path("/x/shop.db.keypoints")
    assert keypoints_folder("milvus:http://localhost:19530") is None


@pytest.mark.parametrize("detector", ["orb", "sift"])
def test_stored_keypoints_read_back_as_they_were_found(tmp_path, files, detector):
    config = RerankConfig(detector=detector)
    store = KeypointStore(tmp_path / "k", config)
    entries = [entry(name, path, config) for name, path in files.items()]
    assert store.add(entries) == 3 and len(store) == 3
    for (name, _, features), path in zip(entries, files.values()):
        back = store.get(name, path)
        assert same(back, features) and back.descriptors.dtype == features.descriptors.dtype
    assert store.get("unknown", files["a"]) is None
    assert store.get("a", files["b"]) is None  # another file than the one they were found in
    assert (tmp_path / "k" / f"{detector}-512-250").is_dir()  # one folder per detector, side and keypoint count
    assert KeypointStore(tmp_path / "k", RerankConfig(detector=detector, side=256)).get("a", files["a"]) is None


def test_a_photo_whose_file_changed_is_not_read_from_the_store(tmp_path, files):
    store = KeypointStore(tmp_path / "k")
    store.add([entry("a", files["a"]), entry("b", files["b"])])
    Image.fromarray(textured(99)).save(files["a"])  # the same name, another photo
    assert store.get("a", files["a"]) is None
    stamp = file_stamp(files["b"])
    os.utime(files["b"], ns=(stamp[1] + 10**9, stamp[1] + 10**9))  # touched: it may have changed
    assert store.get("b", files["b"]) is None
    files["c"].unlink()
    assert store.get("c", files["c"]) is None


def test_a_later_write_wins_and_another_reader_sees_it(tmp_path, files):
    store, reader = KeypointStore(tmp_path / "k"), KeypointStore(tmp_path / "k")
    store.add([entry("a", files["a"])])
    assert same(reader.get("a", files["a"]), store.get("a", files["a"]))
    Image.fromarray(textured(77)).save(files["a"])
    newer = entry("a", files["a"])
    store.add([newer])  # the photo indexed again after its file changed
    assert same(reader.get("a", files["a"]), newer[2])  # a stamp the reader did not know: it looks again
    store.add([entry("b", files["b"])], replace=True)  # a rebuilt catalog
    assert reader.get("b", files["b"]) is not None and KeypointStore(tmp_path / "k").get("a", files["a"]) is None
    assert len(list((tmp_path / "k" / setting(RerankConfig())).glob("*.npy"))) == 1


def test_many_small_writes_are_merged_without_rewriting_the_bulk(tmp_path, files, monkeypatch):
    monkeypatch.setattr(module, "MAX_SEGMENTS", 4)
    store = KeypointStore(tmp_path / "k")
    bulk = [entry(f"bulk{i}", files["c"]) for i in range(20)]
    store.add(bulk)
    first = sorted(store.folder.glob("*.npy"))[0]
    for i in range(8):
        store.add([entry(f"p{i}", files["a" if i % 2 else "b"])])
    segments = sorted(store.folder.glob("*.npy"))
    assert len(segments) <= 5 and segments[0] == first  # the bulk segment is untouched
    reader = KeypointStore(tmp_path / "k")
    assert len(reader) == 28 and all(reader.get(f"p{i}", files["a" if i % 2 else "b"]) for i in range(8))
    assert reader.get("bulk7", files["c"]) is not None


def test_a_store_that_cannot_be_read_is_left_to_searches(tmp_path, files):
    folder = tmp_path / "k" / setting(RerankConfig())
    folder.mkdir(parents=True)
    (folder / "00000000000000000001-x.npy").write_bytes(b"not numpy")
    np.save(folder / "00000000000000000002-y.npy", np.zeros(3, np.float32))  # another layout
    store = KeypointStore(tmp_path / "k")
    assert store.get("a", files["a"]) is None and len(store) == 0
    store.add([entry("a", files["a"])])
    assert store.get("a", files["a"]) is not None


# ---------------------------------------------------------------- at index time, then read by searches


def catalog_of(tmp_path, files, **kwargs):
    vecs = np.eye(4, dtype=np.float32)[: len(files)]
    photos = [Photo(name, name, str(path), "tops") for name, path in files.items()]
    store = build_store(f"faiss:{tmp_path / 'c.vsi'}", photos, vecs, fingerprint=ColourEmbedder.fingerprint)
    return store, photos, vecs


def test_searches_verify_from_the_keypoints_stored_at_index_time(tmp_path, files, monkeypatch):
    store, photos, vecs = catalog_of(tmp_path, files)
    assert index_keypoints(store, photos) == {}
    assert (tmp_path / "c.vsi.keypoints" / setting(RerankConfig())).is_dir()
    searcher = Searcher(ColourEmbedder(), store)
    assert searcher.rerank_ready == 3

    def no_decoding(*args, **kwargs):
        raise AssertionError("a catalog photo was decoded during a search")

    monkeypatch.setattr("vsearch.catalog.search.catalog_features", no_decoding)
    query = warped(textured(22)).astype(np.float32)  # a view of b
    found = searcher.search_vector(vecs[0], 3, "any", rerank_query=query)
    assert found.matches[0]["product_id"] == "b" and found.matches[0]["inliers"] >= RerankConfig().min_inliers
    assert len(found.matches[0]["outline"]) == 4
    store.close()


def test_a_photo_without_stored_keypoints_is_computed_once_and_warming_stores_it(tmp_path, files):
    store, photos, vecs = catalog_of(tmp_path, files)
    index_keypoints(store, photos[:1])  # only a's
    searcher = Searcher(ColourEmbedder(), store)
    assert searcher.rerank_ready == 1
    match = {"photo_id": "b", "path": str(files["b"])}
    assert searcher._photo_features(match)[0] is searcher._photo_features(match)[0]  # computed once, kept
    assert searcher.warm_rerank() == 3
    fresh = Searcher(ColourEmbedder(), store)  # the next start finds all of them stored
    assert len(fresh.keypoints) == 3 and fresh.keypoints.get("c", files["c"]) is not None
    store.close()


def test_building_and_adding_store_keypoints(tmp_path, files):
    folder = tmp_path / "shop" / "tops"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        os.replace(files[name], folder / f"{name}.png")
    built, _ = build_catalog(ColourEmbedder(), tmp_path / "shop", f"faiss:{tmp_path / 'shop.vsi'}", kind="exact")
    stored = KeypointStore.beside(built)
    assert len(stored) == 2 and stored.get("tops/a", folder / "a.png") is not None
    add_products(built, ColourEmbedder(), [files["c"]], category="tops")
    assert len(KeypointStore.beside(built)) == 3
    none, _ = build_catalog(
        ColourEmbedder(), tmp_path / "shop", f"faiss:{tmp_path / 'bare.vsi'}", kind="exact", reranker=None
    )
    assert not (tmp_path / "bare.vsi.keypoints").exists()
    built.close()
    none.close()
