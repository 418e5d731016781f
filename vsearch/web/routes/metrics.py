"""``GET /metrics``: Prometheus' text format (:mod:`vsearch.web.prometheus`)."""

from fastapi import APIRouter
from fastapi.responses import Response

from vsearch.web.deps import Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(metrics: Metrics) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
