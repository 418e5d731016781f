"""``GET /``: the upload page (``static/index.html`` with the catalog's configuration, :mod:`vsearch.web.page`)."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from vsearch.web.deps import CurrentSearcher, Page

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index_page(searcher: CurrentSearcher, page: Page) -> HTMLResponse:
    return HTMLResponse(page.html(searcher))
