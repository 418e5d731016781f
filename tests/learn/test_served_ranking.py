"""The served ranking's metrics (vsearch.learn.served_ranking): the Searcher's answers read back as rankings."""

import numpy as np
import pytest
from conftest import ColourEmbedder
from PIL import Image

from vsearch.catalog.search import Searcher
from vsearch.config import RerankConfig, SearchConfig
from vsearch.learn import metrics
from vsearch.learn.evaluate import class_retrieval
from vsearch.learn.served_ranking import GivenVectors, class_ranking, photo_store, target_ranks


@pytest.fixture
def shop(tmp_path):
    """40 unit vectors in 3 classes, each a photo on disk (textured, so the re-rank can verify it)."""
    from test_rerank import textured

    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(40, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = rng.integers(0, 3, len(vecs))
    paths = []
    for i in range(len(vecs)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(textured(100 + i)).save(paths[-1])
    store = photo_store(tmp_path / "s.vsi", paths, labels, ["a", "b", "c"], vecs, ColourEmbedder.fingerprint)
    yield vecs, labels, paths, store
    store.close()


def test_the_plain_served_ranking_is_the_cosine_ranking(shop):
    vecs, labels, paths, store = shop
    searcher = Searcher(GivenVectors(ColourEmbedder()), store)
    queries = vecs[:6] + 0.3 * np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    served = class_ranking(searcher, queries, [None] * 6, labels[:6], labels, category="any", rerank=False)
    assert served == pytest.approx(class_retrieval(queries, labels[:6], vecs, labels, ["a", "b", "c"])["overall"])
    ranks = target_ranks(searcher, queries, [None] * 6, np.arange(6), category="any", rerank=False, k=10)
    assert (ranks == np.minimum(metrics.rank_of_targets(queries, vecs, np.arange(6)), 10)).all()


def test_the_re_rank_brings_the_photographed_item_first(shop):
    from test_rerank import warped

    vecs, labels, paths, store = shop
    # The toy model's input is 8 px: keypoints at 256 px and 12 inliers verify its photo (the
    # served 512 px / 20 find spurious corners in an 8 px square enlarged 64 times).
    config = SearchConfig(reranker=RerankConfig(side=256, min_inliers=12))
    searcher = Searcher(GivenVectors(ColourEmbedder()), store, config)
    query = vecs[3:4].copy()  # the vector points at product 3; the photo shows the fifth by cosine
    target = int(np.argsort(-(vecs @ vecs[3]), kind="stable")[4])
    photo = warped(np.asarray(Image.open(paths[target])))
    assert target_ranks(searcher, query, [photo], [target], category="any", rerank=False)[0] == 4
    assert target_ranks(searcher, query, [photo], [target], category="any", rerank=True)[0] == 0
    assert target_ranks(searcher, query, [photo], [target])[0] == 0  # the defaults: auto, re-rank
    with pytest.raises(RuntimeError, match="vectors are given"):
        searcher.search(photo)
