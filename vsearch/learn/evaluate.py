"""Stage 3: retrieval metrics and pictures of the road the server serves.

The catalog is the train split, the queries the validation split. Every model is measured
on the same photos, in the same run, through the same road the index and the server use
(:func:`vsearch.embedder.embed_images`: Pillow decoding with EXIF orientation, the
OpenCV resize): the frozen ImageNet MobileNetV2 (global average pooling), the fine-tuned
classifier's pooled features, and the exported embedding model. Beside them, ``in_graph``
states the parity of the SavedModel's own ``serving_default`` (decoding inside the graph,
what TF Serving clients get) with the served road.

``model_dir`` may also be a ``.tflite`` file (``vsearch export --format tflite``): then the
SavedModel it was converted from is measured in the same run too, and ``parity`` reports
the per-image cosine between the two and how TFLite queries fare against the SavedModel's
catalog.

Served ranking: the exported model's figures once more through the ``Searcher``'s defaults
(the category prior of ``category=auto`` and the re-rank; :mod:`vsearch.learn.served_ranking`), which is
what a customer gets.

Customer-photo matching: each validation image, distorted by
:func:`vsearch.augment.customer_photo` (seeded per image), must find its undistorted
original among catalog + validation images.

Calibrated verdict (:mod:`vsearch.catalog.calibration`): a calibration is fitted as ``vsearch
calibrate`` fits it, on customer photos of the catalog (train) items with its default
seeds, and measured on the validation customer photos above, searched in catalog +
validation originals (in the catalog) and with their own original left out: items and
photos the calibration never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vsearch import config as cfg_mod
from vsearch.artifacts import provenance, write_atomic, write_json
from vsearch.config import EvalConfig
from vsearch.embedder import embed_images, embed_one
from vsearch.errors import DataError
from vsearch.images import load_image
from vsearch.learn import metrics
from vsearch.learn.datasets import load_split
from vsearch.learn.photo_checks import checks_path


def class_retrieval(
    queries: np.ndarray,
    query_labels: np.ndarray,
    catalog: np.ndarray,
    catalog_labels: np.ndarray,
    class_names: list[str],
) -> dict:
    """Overall and per-class class-retrieval metrics over a full ranking of the catalog."""
    order = np.argsort(-(queries @ catalog.T), axis=1, kind="stable")
    ranked = catalog_labels[order]
    return {
        "overall": metrics.retrieval_metrics(query_labels, ranked, catalog_labels),
        "per_class": metrics.per_class_retrieval(query_labels, ranked, catalog_labels, class_names),
    }


def customer_queries(paths: list[str], seed: int, limit: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Simulated customer photos of ``paths`` (seeded per image); returns (photos, target index)."""
    from vsearch.augment import customer_photo

    chosen = (
        np.arange(len(paths))
        if not limit
        else np.random.default_rng(seed).choice(len(paths), size=min(limit, len(paths)), replace=False)
    )
    photos = [customer_photo(load_image(paths[i]), np.random.default_rng([seed, int(i)])) for i in chosen]
    return photos, np.asarray(chosen)


def customer_matching(photo_emb: np.ndarray, targets: np.ndarray, catalog: np.ndarray, originals: np.ndarray) -> dict:
    """R@1 and R@10 of each customer photo's original (``originals[target]``) in catalog + originals."""
    pool = np.concatenate([catalog, originals])
    ranks = metrics.rank_of_targets(photo_emb, pool, targets + len(catalog))
    return {**metrics.instance_recall(ranks, (1, 10)), "num_queries": int(len(targets))}


def embed_all(embedder, images: Sequence, batch_size: int, label: str | bool = False) -> np.ndarray:
    """Vectors of every image through the served road; a validated split has no bad photo.

    Raises:
        DataError: a photo could not be used (its rows would no longer line up with the labels).
    """
    done = embed_images(embedder, images, batch_size=batch_size, progress=label)
    if done.bad:
        source, why = next(iter(done.bad.items()))
        raise DataError(f"{len(done.bad)} photo(s) could not be embedded, e.g. {source}: {why}")
    return done.vectors


def parity(vectors: np.ndarray, reference: np.ndarray) -> dict:
    """Per-row cosine (rows are unit vectors) and largest element difference of two embeddings."""
    cosine = np.sum(vectors * reference, axis=1)
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_diff": float(np.abs(vectors - reference).max()),
        "num_images": int(len(cosine)),
    }


def _reference(config: EvalConfig, exported, log: Callable[[str], None]):
    """The SavedModel a TFLite model is compared with, or None (not TFLite, or not found)."""
    from vsearch.embedder import SavedModelEmbedder
    from vsearch.litert import FORMAT, source_model_dir

    if exported.metadata.get("format") != FORMAT:
        return None
    path = Path(config.reference_dir) if config.reference_dir else source_model_dir(config.model_dir, exported.metadata)
    if not config.reference_dir and not path.is_dir():
        log(f"  parity skipped: {path}, the SavedModel it was converted from, is not there (pass --reference)")
        return None
    reference = SavedModelEmbedder(path)
    expected = exported.metadata["source"]["fingerprint"]
    if reference.fingerprint != expected:
        raise DataError(
            f"{path}: weights {reference.fingerprint}, but {config.model_dir} was converted from "
            f"{expected}; pass --reference with that SavedModel, or export the TFLite model again"
        )
    return reference


def _embedders(config: EvalConfig, log: Callable[[str], None]):
    """(name, embedder) pairs: baselines first (when available), the exported model last.

    For a TFLite model the reference SavedModel comes just before it.
    """
    from vsearch.embedder import KerasEmbedder, SavedModelEmbedder, load_embedder
    from vsearch.errors import BackboneError
    from vsearch.learn import models
    from vsearch.learn.classifier import load_classifier

    exported = load_embedder(config.model_dir, config.num_threads or None)
    reference = _reference(config, exported, log)
    out = []
    classifier = None
    if config.baselines:
        size = exported.image_size
        try:
            frozen = models.build_backbone(size, config.baseline_weights)
            label = "ImageNet" if config.baseline_weights == "imagenet" else f"weights={config.baseline_weights}"
            out.append((f"frozen {label} MobileNetV2 (GAP)", KerasEmbedder(models.build_pooled_features(frozen, size))))
        except BackboneError as exc:
            log(f"  baseline (a) skipped: {exc}")
        classifier, _ = load_classifier(config.classifier_dir)
        tuned = models.build_pooled_features(models.find_backbone(classifier), size)
        out.append(("fine-tuned classifier features (GAP)", KerasEmbedder(tuned)))
    for embedder in (reference, exported):
        if embedder is not None:  # TFLite names carry their quantization already
            out.append(
                (
                    f"{embedder.name} (SavedModel)" if isinstance(embedder, SavedModelEmbedder) else embedder.name,
                    embedder,
                )
            )
    return out, exported, reference, classifier


def run_eval(config: EvalConfig, query: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Runs stage 3 and writes ``reports/``; returns the metrics dict."""
    from vsearch.embedder import KerasEmbedder, SavedModelEmbedder

    reports = Path(config.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    root = Path(config.data.data_dir)
    embedders, exported, reference, classifier = _embedders(config, log)
    names = list(exported.metadata.get("class_names") or [])
    checks = checks_path(config.data.feature_cache_dir)
    catalog = load_split(root / "train", reports / ".clean", names or None, config.data.max_image_pixels, checks)
    names = catalog.class_names
    val = load_split(root / "validation", reports / ".clean", names, config.data.max_image_pixels, checks)
    log(f"catalog {len(catalog.paths)} images, {len(val.paths)} validation queries")
    photos, targets = customer_queries(val.paths, config.seed, config.customer_queries)

    results: dict[str, dict] = {}
    vectors = {}
    for name, embedder in embedders:
        cat = embed_all(embedder, catalog.paths, config.data.batch_size, f"{name}: catalog")
        qry = embed_all(embedder, val.paths, config.data.batch_size, f"{name}: queries")
        cust = embed_all(embedder, photos, config.data.batch_size)
        results[name] = {
            **class_retrieval(qry, val.labels, cat, catalog.labels, names),
            "customer_photo": customer_matching(cust, targets, cat, qry),
        }
        vectors[name] = (cat, qry, cust)
        o, c = results[name]["overall"], results[name]["customer_photo"]
        log(
            f"  {name}: P@1 {o['precision@1']:.4f} mAP@R {o['map@r']:.4f} "
            f"customer R@1 {c['recall@1']:.4f} R@10 {c['recall@10']:.4f}"
        )
    summary = {
        "models": results,
        "class_names": names,
        "num_catalog": len(catalog.paths),
        "num_queries": len(val.paths),
        "config": cfg_mod.to_dict(config),
        **provenance(),
        "model": embedders[-1][0],
        "model_metadata": {
            k: exported.metadata.get(k)
            for k in ("fingerprint", "embedding_dim", "image_size", "backbone", "format", "quantization")
        },
    }
    if reference is not None:
        summary["parity"] = _parity(
            vectors[embedders[-2][0]], vectors[embedders[-1][0]], reference, val, catalog, names, targets
        )
        p = summary["parity"]
        log(
            f"  parity with {p['reference']}: cosine mean {p['bytes']['cosine_mean']:.4f} "
            f"min {p['bytes']['cosine_min']:.4f} (validation photos, bytes)"
        )
    if isinstance(exported, SavedModelEmbedder):
        summary["in_graph"] = in_graph_parity(
            exported, val, vectors[embedders[-1][0]], catalog, names, config.data.batch_size
        )
        g = summary["in_graph"]
        log(
            f"  serving_default (in-graph decoding) against the served road: cosine mean {g['cosine_mean']:.4f} "
            f"min {g['cosine_min']:.4f}; its P@1 {g['precision@1']:.4f} MAP@R {g['map@r']:.4f}"
        )
    if classifier is not None:
        probs = embed_all(KerasEmbedder(classifier, normalize=False), val.paths, config.data.batch_size)
        pred = probs.argmax(axis=1)
        summary["classifier"] = metrics.classification_report(val.labels, pred, names)
        log(f"  classifier accuracy {summary['classifier']['accuracy']:.4f}")

    cat, qry, cust = vectors[summary["model"]]
    summary["served"] = served_ranking(exported, catalog, val, cat, qry, cust, photos, targets)
    o, c = summary["served"]["overall"], summary["served"]["customer_photo"]
    log(
        f"  {summary['served']['name']}: P@1 {o['precision@1']:.4f} mAP@R {o['map@r']:.4f} "
        f"customer R@1 {c['recall@1']:.4f} R@10 {c['recall@10']:.4f}"
    )
    summary["calibration"], curves = calibration_check(
        exported, catalog, val, names, cat, qry, cust, targets, config.data.batch_size
    )
    _log_calibration(summary["calibration"], log)
    from vsearch.learn import plots

    plots.reliability_diagram(curves, "validation customer photos, half left out").savefig(
        reports / "reliability.png", dpi=90
    )
    _pictures(config, reports, catalog, val, names, exported, cat, qry, photos, targets, cust, query)
    write_json(reports / "metrics.json", summary)
    write_atomic(reports / "eval.md", format_markdown(summary))
    log(f"wrote {reports}/metrics.json, eval.md and pictures")
    return summary


def served_ranking(exported, catalog, val, cat, qry, cust, photos, targets) -> dict:
    """The exported model's figures through the ``Searcher``'s defaults (:mod:`vsearch.learn.served_ranking`)."""
    import tempfile

    from vsearch.learn.served_ranking import served_metrics

    with tempfile.TemporaryDirectory() as folder:
        figures = served_metrics(exported, catalog, val, cat, qry, cust, photos, targets, folder)
    return {"name": f"served ranking: {exported.name}, category auto, re-rank", **figures}


def calibration_check(embedder, catalog, val, names, cat, qry, cust, targets, batch_size: int) -> tuple[dict, dict]:
    """Fits a calibration on the catalog and measures its verdicts on the validation customer photos.

    Returns:
        (figures, reliability curves): :func:`vsearch.catalog.calibration.verdict_metrics` on the
        validation photos, with the thresholds, methods and held-out ECE of the choice.
    """
    import tempfile

    from vsearch.catalog import calibration as calibrate
    from vsearch.catalog.manifest import Photo
    from vsearch.stores import build_store

    def photos_of(split):
        return [Photo(p, p, p, names[label]) for p, label in zip(split.paths, split.labels)]

    with tempfile.TemporaryDirectory(prefix="vsearch-eval-") as tmp:
        index = build_store(
            f"faiss:{tmp}/catalog.vsi", photos_of(catalog), cat, fingerprint=embedder.fingerprint, kind="exact"
        )
        photos, seed = min(calibrate.DEFAULT_PHOTOS, len(catalog.paths)), calibrate.DEFAULT_SEED
        fit = calibrate.catalog_samples(index, embedder, photos, seed, batch_size)
        check = calibrate.catalog_samples(index, embedder, photos, seed + 1, batch_size)
        calibration = calibrate.fit_calibration(fit, check, embedder.fingerprint)
        index.upsert(photos_of(val), qry)
        heldout = calibrate.query_samples(index, cust, [val.paths[t] for t in targets])
        index.close()
    figures = {
        **calibrate.verdict_metrics(calibration, heldout),
        "target_precision": calibration["target_precision"],
        "thresholds": calibration["thresholds"],
        "method": calibration["method"],
        "selection_ece": calibration["selection_ece"],
        "photos_per_seed": photos,
        "seeds": {"fit": seed, "check": seed + 1},
    }
    return figures, calibrate.reliability_curves(calibration, heldout)


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _log_calibration(c: dict, log: Callable[[str], None]) -> None:
    log(
        f"  calibrated verdict (target {c['target_precision']:.2f}): exact precision {_num(c['exact_precision'])} "
        f"at coverage {_num(c['exact_coverage'])}, false exact on left-out {_num(c['false_exact_on_left_out'])}; "
        f"none on left-out {_num(c['none_on_left_out'])}, on in-catalog {_num(c['none_on_in_catalog'])}; "
        f"ECE {_num(c['ece_exact'], 4)}"
    )


def _calibration_markdown(c: dict) -> list[str]:
    rows = [
        ("'exact' precision", "exact_precision", ">= 0.95"),
        ("'exact' coverage of in-catalog photos", "exact_coverage", ">= 0.80"),
        ("false 'exact' on left-out photos", "false_exact_on_left_out", ""),
        ("'none' on left-out photos", "none_on_left_out", ">= 0.90"),
        ("'none' on in-catalog photos", "none_on_in_catalog", "<= 0.05"),
        ("'none' precision", "none_precision", ""),
        ("top-1 is the item (in-catalog photos)", "top1_correct", ""),
        ("ECE of P(exact)", "ece_exact", ""),
        ("ECE of P(in catalog)", "ece_present", ""),
    ]
    t, m = c["thresholds"], c["method"]
    return [
        "## Calibrated verdict",
        "",
        f"Fitted as `vsearch calibrate` does, on {c['photos_per_seed']} customer photos of catalog items per "
        f"seed (fit: seed {c['seeds']['fit']}; method and thresholds: seed {c['seeds']['check']}); measured on "
        f"the {c['num_in_catalog']} validation customer photos searched in catalog + validation originals and "
        f"the {c['num_left_out']} same photos with their original left out. Methods: exact {m['exact']}, "
        f"present {m['present']}; 'exact' when P(exact) >= {_num(t['exact'])}, 'none' when P(in catalog) <= "
        f"{_num(t['none'])} ('n/a': never said). Reliability diagram: `reliability.png`.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        *[f"| {name} | {_num(c[key], 4 if key.startswith('ece') else 3)} | {target} |" for name, key, target in rows],
        "",
    ]


def in_graph_parity(exported, val, road_vectors, catalog, names, batch_size: int) -> dict:
    """The SavedModel's ``serving_default`` (decoding in the graph) against the served road.

    Per validation photo, the cosine between the two vectors; and the class retrieval of
    the in-graph query vectors against the road's catalog vectors.
    """
    from vsearch.images import read_bytes

    cat, qry, _ = road_vectors
    graph = np.concatenate(
        [
            exported.serving_default([read_bytes(p) for p in val.paths[i : i + batch_size]])
            for i in range(0, len(val.paths), batch_size)
        ]
    )
    cross = class_retrieval(graph, val.labels, cat, catalog.labels, names)["overall"]
    return {**parity(graph, qry), "precision@1": cross["precision@1"], "map@r": cross["map@r"]}


def _parity(reference_vectors, vectors, reference, val, catalog, names, targets) -> dict:
    """TFLite against its source SavedModel: per-image cosine, and TFLite queries in its catalog."""
    ref_cat, ref_qry, ref_cust = reference_vectors
    _, qry, cust = vectors
    cross = class_retrieval(qry, val.labels, ref_cat, catalog.labels, names)["overall"]
    return {
        "reference": str(reference.model_dir),
        "reference_fingerprint": reference.fingerprint,
        "bytes": parity(qry, ref_qry),
        "pixels": parity(cust, ref_cust),
        "queries_in_reference_catalog": {
            "precision@1": cross["precision@1"],
            "map@r": cross["map@r"],
            "customer_recall@1": customer_matching(cust, targets, ref_cat, ref_qry)["recall@1"],
        },
    }


def format_markdown(summary: dict) -> str:
    """The comparison table plus where it came from."""
    lines = [
        "| model | P@1 | P@5 | R@10 | R-Precision | MAP@R | customer R@1 | customer R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = list(summary["models"].items())
    if "served" in summary:
        rows.append((f"**{summary['served']['name']}**", summary["served"]))
    for name, res in rows:
        o, c = res["overall"], res["customer_photo"]
        lines.append(
            f"| {name} | {o['precision@1']:.3f} | {o['precision@5']:.3f} | {o['recall@10']:.3f} | "
            f"{o['r_precision']:.3f} | {o['map@r']:.3f} | {c['recall@1']:.3f} | {c['recall@10']:.3f} |"
        )
    text = [
        "# Evaluation",
        "",
        f"Catalog: {summary['num_catalog']} train images; queries: "
        f"{summary['num_queries']} validation images; customer photos: one simulated photo per query, "
        "matched against catalog + validation originals. Each model row ranks by cosine; the served "
        "ranking is what `vsearch search` and the server answer with their defaults (the cosine plus the "
        "category prior of `category=auto`, then the re-rank of the top 10; `vsearch.learn.served_ranking`).",
        "",
        *lines,
        "",
    ]
    if "classifier" in summary:
        text += [
            f"Classifier validation accuracy: {summary['classifier']['accuracy']:.3f} "
            f"(balanced {summary['classifier']['balanced_accuracy']:.3f}).",
            "",
        ]
    if "in_graph" in summary:
        g = summary["in_graph"]
        text += [
            f"The SavedModel's own `serving_default` (decoding in the graph, no EXIF orientation: what "
            f"TF Serving clients get) against the served road, on the {g['num_images']} validation photos: "
            f"cosine mean {g['cosine_mean']:.4f}, min {g['cosine_min']:.4f}; its queries against the "
            f"served catalog: P@1 {g['precision@1']:.3f}, MAP@R {g['map@r']:.3f}.",
            "",
        ]
    if "parity" in summary:
        p = summary["parity"]
        b, x, q = p["bytes"], p["pixels"], p["queries_in_reference_catalog"]
        text += [
            f"Parity of {summary['model']} with the SavedModel it was converted from "
            f"(`{p['reference']}`, weights {p['reference_fingerprint']}), per image:",
            "",
            "| input | images | cosine mean | cosine min | max abs diff |",
            "|---|---|---|---|---|",
            f"| validation photos as bytes (decoding + model) | {b['num_images']} | {b['cosine_mean']:.4f} | "
            f"{b['cosine_min']:.4f} | {b['max_abs_diff']:.4f} |",
            f"| customer photos as pixels (model only) | {x['num_images']} | {x['cosine_mean']:.4f} | "
            f"{x['cosine_min']:.4f} | {x['max_abs_diff']:.4f} |",
            "",
            f"Its queries against the SavedModel's catalog: P@1 {q['precision@1']:.3f}, "
            f"MAP@R {q['map@r']:.3f}, customer R@1 {q['customer_recall@1']:.3f}.",
            "",
        ]
    if "calibration" in summary:
        text += _calibration_markdown(summary["calibration"])
    text += [f"Per-class, {summary.get('model', 'exported model')}:", "", "| class | P@1 | MAP@R |", "|---|---|---|"]
    exported = summary["models"].get(summary.get("model", "exported embedding (SavedModel)"), {})
    for name, res in exported.get("per_class", {}).items():
        text.append(f"| {name} | {res['precision@1']:.3f} | {res['map@r']:.3f} |")
    text += [
        "",
        f"Commit {summary['commit']}, {summary['date']}, machine: {summary['machine']}.",
        "Command: `vsearch eval` (`make eval`); config:",
        "",
        "```json",
        json.dumps(summary["config"], indent=2),
        "```",
        "",
    ]
    return "\n".join(text)


def _thumb(path: str) -> np.ndarray:
    return load_image(path)


def _pictures(config, reports, catalog, val, names, embedder, cat, qry, photos, targets, cust, query):
    from vsearch.learn import plots

    rng = np.random.default_rng(config.seed)
    k = config.top_k

    def top(vec):
        idx, scores = metrics.ranked_neighbours(vec[None], cat, k)
        return idx[0], scores[0]

    if query:
        pixels = load_image(query, config.data.max_image_pixels)
        vec = embed_one(embedder, pixels, query)
        q_label, caption = None, Path(query).name
    else:
        i = int(rng.integers(len(val.paths)))
        pixels, vec, q_label = _thumb(val.paths[i]), qry[i], names[val.labels[i]]
        caption = f"query: {q_label}"
    idx, scores = top(vec)
    fig = plots.retrieval_grid(
        [pixels],
        [q_label],
        [[_thumb(catalog.paths[j]) for j in idx]],
        [[names[catalog.labels[j]] for j in idx]],
        [scores],
        query_captions=[caption],
    )
    fig.savefig(reports / "retrieval.png", dpi=110)

    rows = rng.choice(len(val.paths), size=min(config.grid_queries, len(val.paths)), replace=False)
    grid = [top(qry[i]) for i in rows]
    fig = plots.retrieval_grid(
        [_thumb(val.paths[i]) for i in rows],
        [names[val.labels[i]] for i in rows],
        [[_thumb(catalog.paths[j]) for j in g[0]] for g in grid],
        [[names[catalog.labels[j]] for j in g[0]] for g in grid],
        [g[1] for g in grid],
    )
    fig.savefig(reports / "retrieval_grid.png", dpi=90)

    centred = cat - cat.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    fig = plots.embedding_map(centred @ vt[:2].T, catalog.labels, names, "catalog embeddings, first 2 PCs")
    fig.savefig(reports / "embedding_map.png", dpi=90)

    pool = np.concatenate([cat, qry])
    pool_paths = catalog.paths + val.paths
    pool_labels = np.concatenate([catalog.labels, val.labels])
    rows = rng.choice(len(photos), size=min(config.grid_queries, len(photos)), replace=False)
    found = [metrics.ranked_neighbours(cust[r][None], pool, k) for r in rows]
    fig = plots.retrieval_grid(
        [photos[r] for r in rows],
        [names[val.labels[targets[r]]] for r in rows],
        [[_thumb(pool_paths[j]) for j in f[0][0]] for f in found],
        [
            [names[pool_labels[j]] + (" = ORIGINAL" if j == len(cat) + targets[r] else "") for j in f[0][0]]
            for r, f in zip(rows, found)
        ],
        [f[1][0] for f in found],
        title="simulated customer photos and what they retrieve (green: the exact original item)",
        relevant=[[j == len(cat) + targets[r] for j in f[0][0]] for r, f in zip(rows, found)],
        query_captions=[f"customer photo: {names[val.labels[targets[r]]]}" for r in rows],
    )
    fig.savefig(reports / "customer_photo.png", dpi=90)
