"""``GET /healthz``: liveness, the catalog's size and categories, the model, the re-rank keypoints
ready, the store's engine (backend; for Milvus the server's version and the roads taken), and
the calibration: what it was fitted on (for one fitted on labelled photos, the search settings,
``road``, and ``differs_from_served``: those this server searches otherwise) and its "exact"
precision on held-out photos (null when the catalog has none)."""

from fastapi import APIRouter

from vsearch.catalog.search import Searcher
from vsearch.catalog.verdict import calibration_summary, road_differences
from vsearch.stores import engine
from vsearch.web.deps import CurrentSearcher

router = APIRouter()


@router.get("/healthz", summary="Liveness, catalog size and model fingerprint")
def healthz(searcher: CurrentSearcher):
    products, photos = searcher.store.count()
    return {
        "status": "ok",
        "products": products,
        "photos": photos,
        "categories": list(searcher.categories),
        "model": {
            "fingerprint": searcher.store.fingerprint,
            "dim": searcher.store.dim,
            "image_size": int(searcher.embedder.image_size),
        },
        "rerank_keypoints": searcher.rerank_ready,
        "store": engine(searcher.store),
        "calibration": calibration_health(searcher),
    }


def calibration_health(searcher: Searcher) -> dict | None:
    """The catalog's calibration summary, with the settings of its road this server searches otherwise."""
    calibration = searcher.store.calibration
    if not calibration:
        return None
    return {
        **calibration_summary(calibration),
        "differs_from_served": sorted(road_differences(calibration, searcher.config)),
    }
