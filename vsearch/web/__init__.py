"""The HTTP server: the upload page and the API over a Searcher.

``app`` (``create_app``: the app's state, middleware and error handlers), ``routes`` (one
``APIRouter`` per resource: page, search, products, items, health, metrics), ``deps`` (the
app's state as ``Depends`` aliases), ``admin`` (the admin token), ``upload`` (an upload's
steps: budgeted decode, embed, search), ``budget`` (the decode memory budget),
``middleware`` (body limit, HEAD, docs policy), ``live`` (taking in other writers' changes,
background compaction), ``prometheus`` (``/metrics``), ``page`` and ``static/index.html``
(the upload page) and ``server`` (``vsearch serve``: running it under uvicorn). Its settings
are a :class:`vsearch.config.ServerConfig`. Imports the catalog, the stores and the ground;
never the learning wing, so a ``.tflite`` model serves without TensorFlow.
"""
