"""Siamese hyper-parameter sweep on cached backbone features.

Caches the frozen bottom of the trained classifier's backbone once (train: 1 clean + 3
simulated customer views; validation: clean, and the seeded Pillow customer photos that
`vsearch eval` uses), then trains a tower per setting and prints, after every epoch, class
P@1 / MAP@R (validation vs train) and customer-photo R@1 / R@10 (vs train + validation).

    python -m experiments.siamese_sweep cache                 # once, after `make train`
    python -m experiments.siamese_sweep run lr=1e-4 w=0.4 nce=1 iinit=imagenet epochs=3

Keys: lr, epochs, inst (instance_fraction), nce (in-batch term weight), tau, margin, T
(triplets per epoch), dim, w (class-branch weight; 0: single branch), iinit (imagenet |
classifier), mining (semihard | random). Each ``run`` prints its metrics after every
epoch; experiments/results/siamese_sweep.md gathers the runs that chose the defaults.
"""

import sys
import time

import numpy as np

from bench.common import ROOT, use_local_weights

use_local_weights()
CACHE = ROOT / ".cache" / "siamese_sweep.npz"
CUT = "block_14"


def cache() -> None:
    import tensorflow as tf

    from vsearch.augment import customer_photo, customer_view
    from vsearch.images import load_image, model_input
    from vsearch.learn import models
    from vsearch.learn.classifier import load_classifier
    from vsearch.learn.datasets import image_dataset
    from vsearch.learn.features import extract

    clf, names = load_classifier(ROOT / "saved_models" / "classifier")
    bottom, _ = models.split_backbone(models.find_backbone(clf), CUT)
    data = ROOT / "data" / "photos"
    tr, va = (image_dataset(data / s, names, 224, 32) for s in ("train", "validation"))
    views = [extract(bottom, tr)] + [extract(bottom, tr, transform=customer_view, seed=1000 + v) for v in (1, 2, 3)]
    photos = [customer_photo(load_image(p), np.random.default_rng([7, i])) for i, p in enumerate(va.file_paths)]
    pixels = np.stack([model_input(p, 224) for p in photos])
    CACHE.parent.mkdir(exist_ok=True)
    np.savez(
        CACHE,
        train=np.stack(views, 1),
        ytr=np.concatenate([y.numpy() for _, y in tr]),
        val=extract(bottom, va),
        yva=np.concatenate([y.numpy() for _, y in va]),
        vcust=extract(bottom, tf.data.Dataset.from_tensor_slices(pixels).batch(32)),
    )
    print("wrote", CACHE)


def run(args: dict) -> None:
    import keras

    from vsearch.learn import models
    from vsearch.learn.classifier import load_classifier
    from vsearch.learn.mining import sample_triplets
    from vsearch.learn.siamese import pca_projection, quick_metrics

    lr, epochs = float(args.get("lr", 1e-4)), int(args.get("epochs", 3))
    inst, nce, tau = float(args.get("inst", 0.5)), float(args.get("nce", 1.0)), float(args.get("tau", 0.1))
    margin, count, dim = float(args.get("margin", 0.2)), int(args.get("T", 4096)), int(args.get("dim", 256))
    w, mining = float(args.get("w", 0.4)), args.get("mining", "semihard")
    d = np.load(CACHE)
    cache_, ytr, val, yva, vcust = d["train"], d["ytr"], d["val"], d["yva"], d["vcust"]
    clf, _ = load_classifier(ROOT / "saved_models" / "classifier")
    _, top = models.split_backbone(models.find_backbone(clf), CUT)
    source = (
        top
        if args.get("iinit", "imagenet") == "classifier"
        else models.split_backbone(models.build_backbone(224, "imagenet"), CUT)[1]
    )
    top_i = models.clone_top(source, "instance_top")
    fi = keras.Input(cache_.shape[2:])
    clean = cache_[:, 0].astype("float32")

    def pca_dense(branch, n):
        feats = keras.Model(fi, keras.layers.GlobalAveragePooling2D()(branch(fi))).predict(clean, 256, verbose=0)
        dense = keras.layers.Dense(n)
        dense.build((None, feats.shape[1]))
        dense.set_weights(list(pca_projection(feats, n)))
        return dense

    proj_i, proj_c = pca_dense(top_i, dim), (pca_dense(top, 128) if w else None)
    if proj_c is not None:
        proj_c.trainable = False
    models.set_fine_tuning(top, False)
    models.set_fine_tuning(top_i, True)
    tower = keras.Model(
        fi,
        models.two_branch_head(
            keras.layers.GlobalAveragePooling2D()(top(fi)) if w else None, top_i(fi), proj_c, proj_i, w
        ),
    )
    triplet = models.build_triplet_model(tower, margin, instance_weight=nce, temperature=tau)
    triplet.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=1e-4))
    embed = lambda x: tower.predict(x.astype("float32"), batch_size=256, verbose=0)  # noqa: E731

    def report() -> str:
        m = quick_metrics(embed(cache_[:, 0]), ytr, embed(val), yva, embed(vcust))
        return (
            f"P@1 {m['precision@1']:.3f} MAP@R {m['map@r']:.3f} "
            f"customer R@1 {m['customer_recall@1']:.3f} R@10 {m['customer_recall@10']:.3f}"
        )

    print(args, "epoch 0", report(), flush=True)
    rng, start = np.random.default_rng(0), time.time()
    n_items, n_views = cache_.shape[:2]
    for epoch in range(epochs):
        emb = (
            embed(cache_.reshape((-1,) + cache_.shape[2:])).reshape(n_items, n_views, -1)
            if mining == "semihard"
            else None
        )
        t = sample_triplets(ytr, n_views, count, rng, inst, emb, margin)
        x = [cache_[i[:, 0], i[:, 1]].astype("float32") for i in (t.anchor, t.positive, t.negative)]
        h = triplet.fit(x, batch_size=64, epochs=1, verbose=0, shuffle=True).history
        print(
            f"epoch {epoch + 1} loss {h['loss'][-1]:.4f} active {h['active_fraction'][-1]:.3f}",
            report(),
            f"{time.time() - start:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("cache", "run"):
        sys.exit(__doc__)
    cache() if sys.argv[1] == "cache" else run(dict(a.split("=", 1) for a in sys.argv[2:]))
