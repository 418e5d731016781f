"""Models: the MobileNetV2 backbone, the classifier, the embedding tower's parts and the triplet model.

Every model takes plain RGB pixels in 0..255; MobileNetV2's preprocessing (scale to -1..1)
is a layer inside the model, so saved models need no outside preprocessing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
from keras import ops

from vsearch.learn.losses import TripletLoss

BACKBONE_NAME = "backbone"
_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"


from vsearch.errors import BackboneError  # noqa: E402  (re-exported)


@keras.saving.register_keras_serializable(package="vsearch")
class L2Normalize(keras.layers.Layer):
    """Scales each vector to unit L2 norm along ``axis``."""

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"L2Normalize: epsilon must be > 0, got {epsilon}")
        self.axis = int(axis)
        self.epsilon = float(epsilon)

    def call(self, x):
        return l2_normalize(x, self.axis, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12):
    """``x / max(||x||, sqrt(epsilon))`` along ``axis``."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, epsilon))


def preprocessing_layer(name: str = "preprocess"):
    """MobileNetV2's ``preprocess_input`` (0..255 -> -1..1) as a serializable layer."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)


def _alpha_tag(alpha: float) -> str:
    return {0.35: "0.35", 0.5: "0.5", 0.75: "0.75", 1.0: "1.0", 1.3: "1.3", 1.4: "1.4"}[alpha]


def imagenet_weights_path(alpha: float = 1.0) -> Path:
    """Where Keras caches the 224x224 no-top ImageNet weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / _WEIGHTS_FILE.format(alpha=_alpha_tag(alpha), size=224)


def build_backbone(image_size: int = 224, weights: str | None = "imagenet", alpha: float = 1.0):
    """MobileNetV2 without its top, named ``backbone``.

    Args:
        image_size: Square input side.
        weights: ``imagenet`` (Keras' standard download, cached under ``KERAS_HOME``),
            ``none``, or the path of a weights file (matched by layer name).
        alpha: Width multiplier.

    Raises:
        BackboneError: ImageNet weights neither cached nor downloadable, or a missing file.
    """
    shape = (image_size, image_size, 3)
    kwargs = dict(input_shape=shape, include_top=False, alpha=alpha, name=BACKBONE_NAME)
    if weights is None or str(weights).lower() == "none":
        return keras.applications.MobileNetV2(weights=None, **kwargs)
    if weights == "imagenet":
        cached = imagenet_weights_path(alpha)
        if image_size != 224 and cached.is_file():
            # Keras asks for a per-resolution file; the 224 one fits any size (same layers).
            return _with_weights_file(keras.applications.MobileNetV2(weights=None, **kwargs), cached)
        try:
            return keras.applications.MobileNetV2(weights="imagenet", **kwargs)
        except Exception as exc:  # Keras raises a bare Exception on URL failures
            raise BackboneError(
                f"ImageNet weights for MobileNetV2 are not cached at {cached} and could not be "
                f"downloaded ({exc}). Set KERAS_HOME to a folder holding models/{cached.name}, "
                "or pass --backbone-weights PATH, or --backbone-weights none."
            ) from None
    return _with_weights_file(keras.applications.MobileNetV2(weights=None, **kwargs), Path(weights))


def _with_weights_file(base, path: Path):
    if not path.is_file():
        raise BackboneError(f"{path}: backbone weights file not found")
    try:
        base.load_weights(str(path))
    except Exception as exc:
        raise BackboneError(f"{path}: cannot load as MobileNetV2 weights ({exc})") from None
    return base


def find_backbone(model) -> keras.Model:
    """The nested MobileNetV2 inside a classifier or tower."""
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise BackboneError(f"model {model.name!r} has no layer named {BACKBONE_NAME!r}") from None


def cut_layer_name(base, fine_tune_from: str) -> str:
    """The first layer of block ``fine_tune_from`` (``block_14``, ``Conv_1``...)."""
    if not re.fullmatch(r"block_(\d+)|Conv_1", fine_tune_from):
        raise BackboneError(f"fine_tune_from must be 'block_N' (1..16) or 'Conv_1', got {fine_tune_from!r}")
    prefix = fine_tune_from + ("_" if fine_tune_from.startswith("block_") else "")
    for layer in base.layers:
        if layer.name == fine_tune_from or layer.name.startswith(prefix):
            return layer.name
    raise BackboneError(f"backbone has no block {fine_tune_from!r}")


def split_backbone(base, fine_tune_from: str):
    """Splits the backbone into a frozen ``bottom`` and a trainable ``top`` sharing its layers.

    The bottom takes pixels 0..255 (it includes the preprocessing); its output is cached
    once per image view and training runs only the top.
    Returns ``(bottom, top)``: ``top(bottom(x))`` equals ``base(preprocess(x))``.
    """
    cut = base.get_layer(cut_layer_name(base, fine_tune_from)).input
    inner = keras.Model(base.input, cut, name="backbone_bottom_inner")
    pixels = keras.Input(tuple(base.input.shape[1:]), name="pixels")
    bottom = keras.Model(pixels, inner(preprocessing_layer()(pixels)), name="backbone_bottom")
    top = keras.Model(cut, base.output, name="backbone_top")
    return bottom, top


def set_fine_tuning(model, trainable: bool) -> None:
    """(Un)freezes a model but keeps every BatchNormalization frozen, in inference mode.

    Every layer is set, not only the model: a layer cloned from a frozen model keeps its own
    ``trainable = False`` through ``model.trainable = True``.
    """
    model.trainable = trainable
    for layer in all_layers(model):
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)


def all_layers(model):
    """Every layer of a model, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


class ClassifierHead:
    """The layers on top of the pooled backbone features, shared by both views of the model."""

    def __init__(self, num_classes: int, dropout: float, weight_decay: float = 0.0):
        reg = keras.regularizers.L2(weight_decay) if weight_decay else None
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        self.dense = keras.layers.Dense(num_classes, activation="softmax", name="predictions", kernel_regularizer=reg)

    def __call__(self, features):
        return self.dense(self.dropout(self.pool(features)))


def build_classifier(base, head: ClassifierHead, image_size: int):
    """Pixels 0..255 -> class probabilities."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = preprocessing_layer()(inputs)
    return keras.Model(inputs, head(base(x)), name="classifier")


def build_pooled_features(base, image_size: int):
    """Pixels 0..255 -> globally pooled backbone features (the baselines' embedding)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = base(preprocessing_layer()(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L2Normalize(name="l2_normalize")(x), name="pooled_features")


def clone_top(top, name: str):
    """An independent copy of a top part (same architecture and weights, own variables)."""
    copy = keras.models.clone_model(top)
    copy.set_weights(top.get_weights())
    copy.name = name
    return copy


def two_branch_head(
    class_pooled,
    instance_features,
    class_projection,
    instance_projection,
    class_weight: float,
    class_head=None,
    probs_weight: float = 0.0,
):
    """Joins a class branch and an instance branch into one unit vector.

    ``class_pooled`` is the class branch's globally pooled feature vector (the frozen
    classifier's, so training can cache it per view); ``instance_features`` is the instance
    branch's feature map, pooled here. Each branch is projected and L2-normalised, scaled by
    sqrt(weight), concatenated and normalised again: the cosine of two embeddings is then
    ``class_weight * cos_class + (1 - class_weight) * cos_instance``. Without a class branch
    (``class_projection`` None) it is the instance branch alone.

    ``class_head`` (the classifier's softmax layer) adds the predicted class probabilities,
    scaled by ``probs_weight``, to the class branch: the classifier's decision is a sharper
    category signal than nearest neighbours in its feature space.
    """
    pool = keras.layers.GlobalAveragePooling2D
    inst = L2Normalize(name="instance_l2")(instance_projection(pool(name="instance_pool")(instance_features)))
    if class_projection is None:
        return inst
    cls = L2Normalize(name="class_l2")(class_projection(class_pooled))
    if class_head is not None and probs_weight > 0:
        probs = keras.layers.Rescaling(probs_weight, name="class_probs_scale")(class_head(class_pooled))
        cls = L2Normalize(name="class_mix_l2")(keras.layers.Concatenate(name="class_mix")([cls, probs]))
    cls = keras.layers.Rescaling(class_weight**0.5, name="class_scale")(cls)
    inst = keras.layers.Rescaling((1.0 - class_weight) ** 0.5, name="instance_scale")(inst)
    return L2Normalize(name="l2_normalize")(keras.layers.Concatenate(name="branches")([cls, inst]))


def frozen_copy(dense, name: str):
    """An independent, frozen copy of a built Dense layer (same weights and activation)."""
    config = {**dense.get_config(), "name": name, "trainable": False}
    copy = keras.layers.Dense.from_config(config)
    copy.build((None, dense.kernel.shape[0]))
    copy.set_weights(dense.get_weights())
    return copy


def build_triplet_model(
    tower,
    margin: float = 0.2,
    distance: str = "euclidean",
    soft: bool = False,
    instance_weight: float = 0.0,
    temperature: float = 0.1,
    product_ids: bool = False,
):
    """Three inputs (anchor, positive, negative) through one shared tower, into :class:`TripletLoss`.

    The inputs take whatever the tower takes: pixels for the full tower, or cached
    backbone features for the trainable top part. A tower with several inputs gets them
    once per role, in the tower's order, named ``{role}_{input name}`` (``anchor_features``,
    ``anchor_class_pooled``, ...); a one-input tower's are ``anchor``, ``positive``, ``negative``.
    With ``product_ids`` a last input ``products`` (N, 3) int takes the product of each role,
    so that the in-batch term leaves other photos of an anchor's product out of its negatives.
    """

    def role_inputs(role: str):
        if len(tower.inputs) == 1:
            return [keras.Input(tuple(tower.inputs[0].shape[1:]), name=role)]
        return [keras.Input(tuple(t.shape[1:]), name=f"{role}_{t.name}") for t in tower.inputs]

    inputs = [role_inputs(role) for role in ("anchor", "positive", "negative")]
    embeddings = [tower(x if len(x) > 1 else x[0]) for x in inputs]
    ids = [keras.Input((3,), dtype="int32", name="products")] if product_ids else []
    distances = TripletLoss(margin, distance, soft, instance_weight, temperature, name="triplet_loss")(
        *embeddings, *ids
    )
    return keras.Model([x for role in inputs for x in role] + ids, distances, name="triplet")
