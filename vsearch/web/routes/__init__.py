"""The app's routes, one module-level ``APIRouter`` per resource, included by :func:`vsearch.web.app.create_app`.

``page`` (``GET /``), ``search`` (``POST /api/search``), ``products`` (the admin writes and
``GET /api/products/ID``), ``items`` (a catalog photo and its metadata), ``health``
(``/healthz``) and ``metrics`` (``/metrics``). They take the app's state through the
``Depends`` aliases of :mod:`vsearch.web.deps`.

Importing this package registers the ``item_id`` path convertor the routes use, before any
of them is defined.
"""

from starlette.convertors import CONVERTOR_TYPES, PathConvertor, register_url_convertor


class ItemIdConvertor(PathConvertor):
    """``{item_id:item_id}``: like ``path`` (slashes included), and newlines too.

    Starlette's ``path`` convertor is ``.*``, which stops at a newline, so an id with one
    (a file name can have it) was a 404.
    """

    regex = r"[\s\S]*"


if "item_id" not in CONVERTOR_TYPES:
    register_url_convertor("item_id", ItemIdConvertor())
