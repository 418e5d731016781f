"""The learning wing: from a shop's photos to an exported embedding model, and its evaluation.

``prepare`` (``vsearch data``: curate photos into ``data/photos``, with ``photo_checks``),
``datasets`` (``tf.data`` input), ``augment``-driven views and ``features`` (frozen-bottom
caches), ``models``, ``losses``, ``mining``, ``fitting`` (what both stages need around
``fit``), the two stages ``classifier`` (stage 1) and ``siamese`` (stage 2), ``export``
(SavedModel) and ``litert_export`` (LiteRT conversion), then ``evaluate`` with ``metrics``,
``plots`` and ``served_ranking`` (the served road measured), and ``query_eval`` (real labelled
photos against a catalog, ``vsearch eval --queries``; ``layouts`` writes such manifests from a
public dataset's own layout). ``synthetic`` makes tiny catalogs for smoke runs. May import
TensorFlow, the catalog, the stores and the ground; nothing on the serving side imports it.
"""
