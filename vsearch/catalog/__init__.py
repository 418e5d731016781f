"""What a shop's catalog is, and how a photo is answered against it.

``manifest`` (a folder or a CSV / JSON Lines / Parquet manifest -> photos of products),
``building`` (embed photos into a store: build, add, upsert), ``products`` (the one road for
writing a product and its media), ``search`` (the Searcher: photo -> products), ``prior``
(the category prior of ``category=auto``), ``rerank`` (local-feature verification of a short
list), ``keypoints`` (the re-rank's catalog keypoints, stored beside the store when photos are
indexed), ``calibration`` (fits what a score means: exact item / similar / not in the
catalog), ``verdict`` (applies it to an answer),
``pipeline`` (``vsearch embed`` on Apache Beam) and ``demo`` (``make products``). Imports the
stores and the ground, never TensorFlow at module level, never the learning wing or the web.
"""
