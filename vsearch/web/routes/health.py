"""``GET /healthz``: liveness, the catalog's size and categories, the model, the re-rank keypoints
ready, the store's engine (backend; for Milvus the server's version and the roads taken), and
the calibration: what it was fitted on and its "exact" precision on held-out photos (null
when the catalog has none)."""

from fastapi import APIRouter

from vsearch.catalog.search import calibration_summary
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
        "calibration": calibration_summary(calibration) if (calibration := searcher.store.calibration) else None,
    }
