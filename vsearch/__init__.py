"""vsearch: visual search for a product catalog (MobileNetV2 + triplet embeddings, Keras 3)."""

__version__ = "0.1.0"
