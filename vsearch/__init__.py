"""vsearch: visual search for a product catalog (MobileNetV2 + triplet embeddings, Keras 3).

The folders are the architecture; each layer imports only the layers below it (an
import-linter contract in pyproject.toml, run by ``make lint``)::

    cli/                           argparse only: each command calls one function of a wing
    learn/   |   web/              the learning wing (TensorFlow) | the HTTP server; never each other
    catalog/                       what a shop's catalog is: manifests, products, search, calibration
    stores/                        where its vectors live: one interface, FAISS and Milvus, filters
    the ground                     images, embedder, litert, vectors, augment, config, artifacts, errors

The ground is what every wing may use: ``images`` is the one road from a photo to model
pixels, ``embedder`` the one batching loop over a SavedModel or a LiteRT model, ``config``
every setting (training and serving) as frozen dataclasses with presets.
"""

__version__ = "0.1.0"
