"""A real Searcher over a small catalog with a fake model, for fast server tests.

The fake model (:class:`ColourEmbedder`) is a few numpy statistics of the model input, so
everything around it is the real thing: the image road, the catalog index, the searcher
and the web app. Also the helpers the server tests share (uploads, scraped metrics). Run as
a script, it serves such a catalog on loopback (the memory test measures that process)::

    python tests/fake_server.py --root DIR --port-file FILE [--budget-mb N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np

FINGERPRINT = "colour-embedder-1"
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


class ColourEmbedder:
    """(N, 16, 16, 3) pixels -> unit vectors of channel means, spreads and gradients."""

    image_size = 16
    dim = 8
    fingerprint = FINGERPRINT
    name = "colour statistics"

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels, np.float32) / 255.0
        if x.ndim != 4 or x.shape[1:] != (16, 16, 3) or not len(x):
            raise ValueError(f"expected (N, 16, 16, 3) pixels, got {x.shape}")
        means, spreads = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
        vertical = x[:, :8].mean(axis=(1, 2, 3)) - x[:, 8:].mean(axis=(1, 2, 3))
        horizontal = x[:, :, :8].mean(axis=(1, 2, 3)) - x[:, :, 8:].mean(axis=(1, 2, 3))
        out = np.concatenate([means, spreads, vertical[:, None], horizontal[:, None]], axis=1) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def photo(colour, seed: int, size=(40, 48)) -> np.ndarray:
    """A product-like photo: a coloured block with a seeded position on a light background."""
    rng = np.random.default_rng(seed)
    img = np.full((size[1], size[0], 3), 235, np.uint8)
    top, left = rng.integers(2, 12, 2)
    img[top : top + 24, left : left + 20] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    return img


BRANDS = ("acme", "zeta")


def write_catalog(root: Path, per_category: int = 4) -> Path:
    """Writes root/photos/<colour>/<i>.png and root/catalog.vsi (a faiss store, exact); returns its path.

    Product ``<colour>/<i>`` is photo ``i`` of its colour, with attributes ``title``,
    ``price`` (10, 20, ...), ``brand`` (acme, zeta, acme, ...) and ``in_stock`` (even i);
    product ``<colour>/0`` also has a second photo (``<colour>/0/back``, its photo 0 mirrored).
    """
    from PIL import Image

    from vsearch.catalog.manifest import Photo
    from vsearch.images import model_input
    from vsearch.stores import build_store

    embedder = ColourEmbedder()
    photos, inputs = [], []
    for c, (name, colour) in enumerate(sorted(COLOURS.items())):
        folder = root / "photos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_category):
            attributes = {
                "title": f"{name} item {i}",
                "price": 10.0 * (i + 1),
                "brand": BRANDS[i % 2],
                "in_stock": i % 2 == 0,
            }
            pixels = photo(colour, 10 * c + i)
            views = [(f"{name}/{i}", folder / f"{i}.png", pixels)]
            if i == 0:
                views.append((f"{name}/0/back", folder / "0-back.png", pixels[:, ::-1]))
            for photo_id, path, view in views:
                Image.fromarray(np.ascontiguousarray(view)).save(path)
                photos.append(Photo(f"{name}/{i}", photo_id, str(path.resolve()), name, attributes))
                inputs.append(model_input(path, embedder.image_size))
    path = root / "catalog.vsi"
    build_store(
        f"faiss:{path}",
        photos,
        embedder.embed_pixels(np.stack(inputs)),
        fingerprint=FINGERPRINT,
        model={"source": "fake"},
        kind="exact",
    ).close()
    return path


def load_searcher(index: Path, verdicts: bool = False, **kwargs):
    """A Searcher over the catalog at ``index``; ``verdicts``: a :func:`verdict_searcher` instead."""
    from vsearch.catalog.search import Searcher
    from vsearch.stores import open_store

    cls = verdict_searcher() if verdicts else Searcher
    return cls(ColourEmbedder(), open_store(f"faiss:{index}", expected_fingerprint=FINGERPRINT), **kwargs)


EXACT_SCORE = 0.995  # the fake verdict's "exact" threshold: a catalog photo or a close crop of one


def verdict_searcher():
    """A Searcher class whose answers carry a ``match`` verdict only when the top score is near 1.

    Calibration is not what this fakes: it gives the page an answer with a verdict ("exact")
    and one without, from the same catalog.
    """
    from vsearch.catalog.search import Searcher

    class VerdictSearcher(Searcher):
        def search_query(self, query, vectors, k=5, category="any", where=None, rerank=None):
            result = super().search_query(query, vectors, k, category, where, rerank)
            if result.matches and result.matches[0]["score"] >= EXACT_SCORE:
                result.match = {"verdict": "exact", "confidence": round(result.matches[0]["score"], 3)}
            return result

    return VerdictSearcher


def side_by_side(searcher, item_ids, scale: int = 5) -> np.ndarray:
    """The catalog photos of ``item_ids`` next to each other on one canvas, each enlarged ``scale`` times."""
    from vsearch.images import load_image

    canvas = np.concatenate([load_image(searcher.image_path(i)) for i in item_ids], axis=1)
    return canvas.repeat(scale, axis=0).repeat(scale, axis=1)


def photo_of(searcher, item_id: str) -> bytes:
    """The encoded catalog photo of an item."""
    return searcher.image_path(item_id).read_bytes()


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def post(client, data: bytes, name: str = "q.png", **fields):
    """``POST /api/search`` with ``data`` as the file and ``fields`` as form fields."""
    return client.post(
        "/api/search",
        files={"file": (name, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def metrics_of(client) -> dict[str, list]:
    """Scraped /metrics, parsed: family name -> its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(r.text)}


def sample(families, name: str, **labels) -> float:
    """The value of the sample ``name`` with ``labels`` among scraped ``families``."""
    for family in families.values():
        for s in family:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


def main(argv=None) -> int:
    import uvicorn

    from vsearch.config import ServerConfig
    from vsearch.web.app import create_app
    from vsearch.web.server import listen, warm_up

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--budget-mb", type=float, default=ServerConfig.decode_budget_mb)
    parser.add_argument("--wait-s", type=float, default=ServerConfig.decode_wait_s)
    args = parser.parse_args(argv)
    index = write_catalog(args.root)
    searcher = load_searcher(index)
    warm_up(searcher)
    sock = listen("127.0.0.1", 0)
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    app = create_app(searcher, ServerConfig(decode_budget_mb=args.budget_mb, decode_wait_s=args.wait_s))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    os.replace(tmp, args.port_file)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
