"""The HTTP server: the upload page and the API over a Searcher.

``app`` (the FastAPI application and its routes), ``admin`` (token-protected product
writes), ``upload`` (an upload's steps: budgeted decode, embed, search), ``budget`` (the
decode memory budget), ``middleware`` (body limit, HEAD, docs policy), ``live`` (taking in
other writers' changes, background compaction), ``prometheus`` (``/metrics``), ``page``
(the upload page) and ``server`` (``vsearch serve``: running it under uvicorn). Imports the
catalog, the stores and the ground; never the learning wing, so a ``.tflite`` model serves
without TensorFlow.
"""
