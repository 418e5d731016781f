"""Stage 2: triplet training of the embedding tower, then the SavedModel export.

The trained classifier's MobileNetV2 base becomes the shared tower of a three-input
(anchor, positive, negative) model whose :class:`~vsearch.losses.TripletLoss` layer adds
the margin loss. Each catalog image is cached once clean and ``views_per_image - 1`` times
as a simulated customer photo (:func:`vsearch.augment.customer_view`) at the cut of the
backbone; triplets over those views (:mod:`vsearch.mining`, instance and class triplets,
negatives re-mined semi-hard from the current embeddings every epoch) train the top
blocks and a projection head with plain ``model.fit``. The class branch (the classifier's
top) is frozen, so its pooled vector is also computed once per cached view: training
steps and mining passes run the trainable instance branch only.

Both objectives are measured on the validation split after every epoch: class retrieval
(P@1, MAP@R against the catalog) and customer-photo matching (R@1 of a simulated customer
photo against catalog + validation originals).

Writes ``{work_dir}/`` (``tower.keras``, ``triplet.keras``, ``config.json``, ``metrics.json``,
``logs/``) and the SavedModel ``{out_dir}/`` (see :mod:`vsearch.export`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vsearch import config as cfg_mod
from vsearch.config import SiameseConfig


def pca_projection(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a Dense layer projecting onto the top ``dim`` principal components.

    Starting the projection head from PCA keeps the classifier's feature geometry, so
    epoch 0 is already a sensible embedding (a random projection would blur it).
    """
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = vt[:dim]
    if components.shape[0] < dim:  # fewer samples than dims: pad with random directions
        rng = np.random.default_rng(0)
        extra = rng.standard_normal((dim - components.shape[0], features.shape[1]))
        components = np.concatenate([components, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    kernel = components.T.astype(np.float32)
    return kernel, (-mean @ kernel).astype(np.float32)


def quick_metrics(catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray,
                  query_labels: np.ndarray, customer: np.ndarray) -> dict:
    """Class retrieval of ``queries`` in ``catalog``, and instance R@1 of ``customer[i]`` -> ``queries[i]``.

    The instance pool is catalog + queries (originals), the target of customer photo i is query i.
    """
    from vsearch.evaluate import class_retrieval, customer_matching

    names = [str(c) for c in range(int(max(catalog_labels.max(), query_labels.max())) + 1)]
    retrieval = class_retrieval(queries, query_labels, catalog, catalog_labels, names)["overall"]
    inst = customer_matching(customer, np.arange(len(queries)), catalog, queries)
    return {"precision@1": retrieval["precision@1"], "map@r": retrieval["map@r"],
            "customer_recall@1": inst["recall@1"], "customer_recall@10": inst["recall@10"]}


def train_siamese(config: SiameseConfig, log: Callable[[str], None] = print) -> dict:
    """Runs stage 2 end to end: cache views, train triplets, export; returns the metrics."""
    import keras

    from vsearch import models
    from vsearch.augment import CUSTOMER_VIEW_SEED, customer_view
    from vsearch.datasets import image_dataset
    from vsearch.export import export_embedding
    from vsearch.features import TOP_PREDICT_BATCH, Frozen, extract, extract_cached, files_digest
    from vsearch.mining import sample_triplets
    from vsearch.train import load_classifier, load_splits

    keras.utils.set_random_seed(config.data.seed)
    rng = np.random.default_rng(config.data.seed)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    size, batch = config.data.image_size, config.data.batch_size

    classifier, names = load_classifier(config.classifier_dir)
    if int(classifier.input.shape[1]) != size:
        raise cfg_mod.ConfigError(
            f"data.image_size={size} but the classifier in {config.classifier_dir} takes "
            f"{classifier.input.shape[1]}x{classifier.input.shape[1]}")
    base = models.find_backbone(classifier)
    train_root, val_root, found, _, _ = load_splits(_as_classifier_config(config), work / ".clean", log)
    if found != names:
        raise cfg_mod.ConfigError(f"classes {found} in {config.data.data_dir} differ from the classifier's {names}")
    train_ds = image_dataset(train_root, names, size, batch, cache=True)
    val_ds = image_dataset(val_root, names, size, batch, cache=True)
    y_train, y_val = train_ds.labels, val_ds.labels
    timings["load_s"] = time.perf_counter() - t0

    bottom, top = models.split_backbone(base, config.fine_tune_from)
    models.set_fine_tuning(base, False)

    # Cache the frozen bottom: view 0 clean, then simulated customer photos (the same seeded
    # views `vsearch train` cached, read from disk when they are there).
    t = time.perf_counter()
    cache_dir = config.data.feature_cache_dir or None
    digest = files_digest(train_ds.file_paths)
    frozen = Frozen(bottom, config.data.feature_runtime, cache_dir, log,
                    images=len(train_ds.file_paths) * config.views_per_image + 2 * len(val_ds.file_paths))
    views = [extract_cached(frozen, train_ds, train_ds.file_paths, cache_dir, log=log, label="catalog clean",
                            digest=digest)]
    for v in range(1, config.views_per_image):
        views.append(extract_cached(frozen, train_ds, train_ds.file_paths, cache_dir, transform=customer_view,
                                    seed=CUSTOMER_VIEW_SEED + v, batch_size=batch, log=log,
                                    label=f"catalog customer view {v}", digest=digest))
    cache = np.stack(views, axis=1)  # (items, views, h, w, c)
    del views
    val_clean = extract_cached(frozen, val_ds, val_ds.file_paths, cache_dir, log=log, label="validation clean")
    val_customer = extract(frozen, val_ds, transform=customer_view, seed=99, batch_size=batch,
                           log=log, label="validation customer view")
    timings["feature_cache_s"] = time.perf_counter() - t

    # Two branches on the cached features. The class branch is the classifier's top, frozen:
    # it keeps the categories apart. Being frozen, its pooled output is computed once per
    # cached view (here) instead of in every training step and every mining pass. The
    # instance branch is a trainable copy of the top blocks: triplets teach it to match a
    # customer's photo to that exact item.
    clf_config = _classifier_config(config.classifier_dir)
    if config.instance_init == "imagenet":
        _, source_top = models.split_backbone(models.build_backbone(size, "imagenet", clf_config.alpha),
                                              config.fine_tune_from)
    else:
        source_top = top
    instance_top = models.clone_top(source_top, "instance_top")
    feat_in = keras.Input(tuple(top.input.shape[1:]), name="features")
    n_items, n_views = cache.shape[:2]
    t = time.perf_counter()
    pooled_top = lambda branch: keras.Model(feat_in, keras.layers.GlobalAveragePooling2D()(branch(feat_in)))  # noqa: E731
    if config.class_dim:
        class_branch = pooled_top(top)
        class_pooled = lambda x: class_branch.predict(x, batch_size=TOP_PREDICT_BATCH, verbose=0)  # noqa: E731
        class_cache = class_pooled(cache.reshape((-1,) + cache.shape[2:])).reshape(n_items, n_views, -1)
        val_clean_class, val_customer_class = class_pooled(val_clean), class_pooled(val_customer)
    else:
        class_cache = val_clean_class = val_customer_class = None
    timings["class_branch_cache_s"] = time.perf_counter() - t

    def pca_dense(features, dim: int, name: str, trainable: bool):
        dense = keras.layers.Dense(dim, name=name, trainable=trainable,
                                   kernel_regularizer=keras.regularizers.L2(config.weight_decay))
        dense.build((None, features.shape[1]))
        dense.set_weights(list(pca_projection(features, dim)))  # PCA start keeps the geometry
        return dense

    instance_clean = pooled_top(instance_top).predict(cache[:, 0], batch_size=TOP_PREDICT_BATCH, verbose=0)
    instance_projection = pca_dense(instance_clean, config.embedding_dim, "instance_projection", True)
    del instance_clean
    class_projection = (pca_dense(class_cache[:, 0], config.class_dim, "class_projection", False)
                        if config.class_dim else None)
    models.set_fine_tuning(top, False)
    models.set_fine_tuning(instance_top, True)

    class_head = models.frozen_copy(classifier.get_layer("predictions"), "class_head")

    def head(features, class_pooled):
        return models.two_branch_head(class_pooled, instance_top(features), class_projection, instance_projection,
                                      config.class_weight, class_head, config.class_probs_weight)

    # Trained on (cached features, cached class-branch vector) per view.
    class_in = ([keras.Input((class_cache.shape[-1],), name="class_pooled")] if config.class_dim else [])
    top_tower = keras.Model([feat_in, *class_in], head(feat_in, class_in[0] if class_in else None),
                            name="tower_top")
    triplet_model = models.build_triplet_model(top_tower, config.margin, instance_weight=config.instance_loss_weight,
                                               temperature=config.temperature)
    triplet_model.compile(optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay))

    def tower_inputs(features, class_vectors) -> list[np.ndarray]:
        """The training tower's inputs: feature maps, and their class vectors with a class branch.

        The float16 feature maps go in as they are: Keras casts each batch to float32
        (exactly), where a float32 copy of every gathered view cost seconds per epoch."""
        return [features] + ([class_vectors] if class_in else [])

    def embed(features, class_vectors):
        return top_tower.predict(tower_inputs(features, class_vectors), batch_size=TOP_PREDICT_BATCH, verbose=0)

    def views_of(items, views) -> list[np.ndarray]:
        """The tower's inputs for views ``(items[i], views[i])`` of the catalog cache."""
        return tower_inputs(cache[items, views], class_cache[items, views] if class_in else None)

    mine = config.mining == "semihard"

    def embed_catalog(all_views: bool):
        """(embeddings of every view for mining or None, embeddings of the clean catalog)."""
        if not all_views:
            return None, embed(cache[:, 0], class_cache[:, 0] if class_in else None)
        flat = lambda a: a.reshape((-1,) + a.shape[2:]) if a is not None else None  # noqa: E731
        emb = embed(flat(cache), flat(class_cache)).reshape(n_items, n_views, -1)
        return emb, emb[:, 0]

    def evaluate(catalog_emb) -> dict:
        return quick_metrics(catalog_emb, y_train, embed(val_clean, val_clean_class), y_val,
                             embed(val_customer, val_customer_class))

    # Mining for epoch e+1 needs every view embedded after epoch e; the clean views among
    # them serve the metrics of epoch e, so the catalog is embedded once per epoch.
    history: dict[str, list[float]] = {}
    emb, catalog_emb = embed_catalog(mine and config.epochs > 0)
    start_metrics = evaluate(catalog_emb)
    log(f"  epoch 0: {_fmt(start_metrics)}")
    for key, value in start_metrics.items():
        history.setdefault(f"val_{key}", []).append(value)
    tensorboard = keras.callbacks.TensorBoard(str(work / "logs"))
    t = time.perf_counter()
    for epoch in range(config.epochs):
        lap = time.perf_counter()
        trip = sample_triplets(y_train, n_views, config.triplets_per_epoch, rng, config.instance_fraction,
                               emb, config.margin)
        inputs = [x for idx in (trip.anchor, trip.positive, trip.negative) for x in views_of(idx[:, 0], idx[:, 1])]
        lap = _lap(timings, "sampling_s", lap)
        h = triplet_model.fit(inputs, epochs=epoch + 1, initial_epoch=epoch, batch_size=config.batch_size,
                              shuffle=True, callbacks=[tensorboard], verbose=0)
        del inputs
        lap = _lap(timings, "fit_s", lap)
        emb, catalog_emb = embed_catalog(mine and epoch + 1 < config.epochs)
        lap = _lap(timings, "embed_catalog_s", lap)
        quick = evaluate(catalog_emb)
        _lap(timings, "validation_s", lap)
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        for key, value in quick.items():
            history.setdefault(f"val_{key}", []).append(value)
        log(f"  epoch {epoch + 1}: loss {h.history['loss'][-1]:.4f} active "
            f"{h.history['active_fraction'][-1]:.3f} | {_fmt(quick)}")
    timings["triplet_training_s"] = time.perf_counter() - t

    # The exported tower: pixels -> frozen bottom -> (class branch, instance branch) -> unit vector.
    # Independent copies of the shared parts keep the saved model free of shared layers.
    pixels = keras.Input((size, size, 3), name="image")
    features = models.clone_top(bottom, "backbone_bottom")(pixels)
    class_pooled_out = (keras.layers.GlobalAveragePooling2D(name="class_pool")(
        models.clone_top(top, "class_top")(features)) if class_in else None)
    tower = keras.Model(pixels, head(features, class_pooled_out), name="embedding")
    # The exported tower must compute what was trained on cached features (float16 cache aside).
    first = next(iter(val_ds))[0]
    n = len(first)
    trained = embed(val_clean[:n], val_clean_class[:n] if class_in else None)
    cache_diff = float(np.abs(tower.predict(first, verbose=0) - trained).max())
    final = {k: v[-1] for k, v in history.items() if k.startswith("val_")}
    timings["total_s"] = time.perf_counter() - t0
    result = {"validation": final, "start": start_metrics, "history": history, "timings": timings,
              "cache_max_abs_diff": cache_diff,
              "num_catalog": int(n_items), "views_per_image": int(n_views)}
    tower.save(work / "tower.keras")
    triplet_model.save(work / "triplet.keras")
    cfg_mod.save_json(config, work / "config.json")
    (work / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    classifier_metrics = json.loads((Path(config.classifier_dir) / "metrics.json").read_text())
    export_embedding(tower, config.out_dir, {
        "class_names": names, "backbone": _backbone_description(config.classifier_dir),
        "branches": {"class": config.class_dim, "instance": config.embedding_dim,
                     "class_probabilities": len(names) if config.class_dim and config.class_probs_weight else 0,
                     "class_weight": config.class_weight if config.class_dim else 0.0},
        "training_config": cfg_mod.to_dict(config),
        "metrics": {"siamese_validation": final,
                    "classifier_accuracy": classifier_metrics.get("accuracy")}})
    log(f"siamese: {_fmt(final)}; total {timings['total_s']:.0f}s; exported {config.out_dir}")
    return result


def _lap(timings: dict[str, float], key: str, since: float) -> float:
    """Adds the seconds since ``since`` to ``timings[key]``; returns now."""
    now = time.perf_counter()
    timings[key] = timings.get(key, 0.0) + now - since
    return now


def _classifier_config(classifier_dir: str):
    from vsearch.config import ClassifierConfig

    return cfg_mod.load_json(ClassifierConfig, Path(classifier_dir) / "config.json")


def _backbone_description(classifier_dir: str) -> str:
    clf = _classifier_config(classifier_dir)
    return f"MobileNetV2 alpha={clf.alpha} weights={clf.backbone_weights} fine_tune_from={clf.fine_tune_from}"


def _fmt(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in values.items())


def _as_classifier_config(config: SiameseConfig):
    from vsearch.config import ClassifierConfig

    return ClassifierConfig(data=config.data)
