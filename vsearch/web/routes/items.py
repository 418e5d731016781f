"""``GET /api/items/{id}``: a catalog photo's metadata; ``GET /api/items/{id}/image``: the photo.

Any id works once percent-encoded (``image_url`` does it): slashes, newlines and other
control characters, ``%``, ``?``, ``#``. A photo is found by looking its id up in the store,
so no path from a request reaches the file system.
"""

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from vsearch.catalog.products import public_item
from vsearch.web.deps import CurrentSearcher
from vsearch.web.middleware import error_response

router = APIRouter()


# Before the metadata route: its {item_id} would also match ".../image".
@router.get("/api/items/{item_id:item_id}/image", summary="A catalog photo", response_class=FileResponse)
def item_image(item_id: str, searcher: CurrentSearcher) -> Response:
    try:
        path = searcher.image_path(item_id)
    except KeyError:
        # Photo ids are paths, so a photo may be called "<folder>/image": this route
        # matches its metadata URL too, and the photo's metadata is what was asked for.
        found = searcher.store.photo(f"{item_id}/image")
        if found is not None:
            return JSONResponse(public_item(found))
        return error_response(404, f"no photo {item_id!r} in the catalog")
    if not path.is_file():
        return error_response(404, f"the file of photo {item_id!r} is missing on the server")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/api/items/{item_id:item_id}", summary="A catalog photo's metadata: its product, category, attributes")
def item(item_id: str, searcher: CurrentSearcher):
    found = searcher.store.photo(item_id)
    return public_item(found) if found is not None else error_response(404, f"no photo {item_id!r} in the catalog")
