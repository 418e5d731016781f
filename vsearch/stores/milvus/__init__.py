"""The Milvus store: ``milvus:FILE.db`` (milvus-lite, in this process) or ``milvus:http://HOST:19530``.

One module per concern:

- :mod:`~vsearch.stores.milvus.connection`: where a catalog is, the connection, the server's
  version and roads, errors as StoreErrors, and the writer locks;
- :mod:`~vsearch.stores.milvus.layout`: the collection's layout: its schema, the typed
  attribute columns, the metadata properties, and photos as rows and back;
- :mod:`~vsearch.stores.milvus.collection`: a catalog's collection, its metadata and the calls
  that read it;
- :mod:`~vsearch.stores.milvus.searching`: filters as expressions, the exact search of a small
  filtered set, and the grouping into products for a server without group-by;
- :mod:`~vsearch.stores.milvus.writing`: upserts and deletes, and what an acknowledged write keeps;
- :mod:`~vsearch.stores.milvus.store`: :class:`~vsearch.stores.milvus.store.MilvusStore`, which
  ties them together, and :func:`open`;
- :mod:`~vsearch.stores.milvus.building`: :func:`build`, the swap of a rebuilt catalog, and its index.
"""

from __future__ import annotations

from vsearch.stores.milvus.building import build, ivf_params
from vsearch.stores.milvus.connection import server_roads
from vsearch.stores.milvus.store import open

__all__ = ["build", "ivf_params", "open", "server_roads"]
