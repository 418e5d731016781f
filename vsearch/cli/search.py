"""``vsearch search``: a photo (or a part of it) -> the catalog's products, printed or as JSON."""

from __future__ import annotations

import argparse
import os

from vsearch.cli.common import (
    DEFAULT_MODEL,
    category_prior_arg,
    check_output_file,
    serving_settings,
    settings_args,
    store_arg,
    store_of,
)


def cmd_search(args) -> int:
    import json

    from vsearch.catalog.search import Searcher
    from vsearch.config import SearchConfig
    from vsearch.embedder import load_embedder
    from vsearch.images import crop, load_image, parse_box
    from vsearch.stores.filters import parse_where

    # fail fast, before loading the model
    config = serving_settings(
        SearchConfig,
        args,
        {
            "-k": ("k", args.k),
            "--category": ("category", args.category),
            "--category-prior": ("category_prior", args.category_prior),
            "--rerank": ("rerank", args.rerank),
            "--regions": ("regions", args.regions),
        },
    )
    box = parse_box(args.box, "--box") if args.box is not None else None
    pixels = load_image(args.photo, config.max_pixels, config.max_bytes)
    if args.plot:
        check_output_file(args.plot, "--plot")
    store = store_of(args)
    where = parse_where(args.where, store.schema)
    searcher = Searcher(load_embedder(args.model, num_threads=args.threads), store, config)
    result = searcher.search(pixels, source=args.photo, box=box, where=where)
    if args.json:
        print(json.dumps({"query": args.photo, "box": list(box) if box else None, **result.to_dict()}, indent=2))
    else:
        if box:
            print(f"the part of the photo in the box {','.join(f'{v:g}' for v in box)}")
        if result.region:
            print(
                f"found in the part {','.join(f'{v:g}' for v in result.region)} of the photo (regions {config.regions})"
            )
        if where:
            print(f"products where {where.describe()}")
        if result.match:
            print(
                {
                    "exact": f"This is it ({result.match['confidence']:.2f})",
                    "similar": "Similar items",
                    "none": "Not in the catalog",
                }[result.match["verdict"]]
            )
        cat = result.category
        if cat["predicted"]:
            print(
                f"category {cat['mode']}: {cat['predicted']}"
                + (f" (vote {cat['confidence']:.2f}, favoured)" if cat["confidence"] is not None else "")
            )
        for rank, m in enumerate(result.matches, 1):
            verified = "  verified" if m.get("inliers", 0) >= searcher.rerank_config.min_inliers else ""
            print(f"{rank:>3}. {m['score']:.3f}  {m.get('category') or '-':<12} {product_line(m)}{verified}")
        if not result.matches:
            print("no product matches" + (f" {where.describe()}" if where else ""))
    if args.plot:
        from vsearch.catalog.search import thumbnails
        from vsearch.learn import plots

        found = result.matches
        query = crop(pixels, box) if box else pixels  # the part that was searched
        fig = plots.retrieval(
            query,
            None,
            thumbnails(found),
            [x["attributes"].get("title") or x.get("category", "") for x in found],
            [x["score"] for x in found],
            title=f"vsearch: {args.photo}",
        )
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        fig.savefig(args.plot, dpi=80, bbox_inches="tight")
        print(f"wrote {args.plot}")
    return 0


def product_line(match: dict) -> str:
    """A product as one line: its id, title, the other attributes, and the photo that matched."""
    attributes = dict(match.get("attributes") or {})
    title = attributes.pop("title", None)
    shown = ", ".join(f"{k}={v}" for k, v in attributes.items() if v is not None and k != "url")
    photo_id = str(match.get("photo_id") or match["product_id"])
    photo = f" (photo {photo_id.rsplit('/', 1)[-1]})" if photo_id != match["product_id"] else ""
    return match["product_id"] + (f"  {title}" if title else "") + (f"  [{shown}]" if shown else "") + photo


def add_search_parser(sub) -> None:
    from vsearch.config import SearchConfig

    p = sub.add_parser(
        "search",
        help="find the catalog's products in a photo",
        description="Embed a photo and print the top-k products (each once, by its best photo). "
        "Its settings are a SearchConfig (vsearch/config.py): --preset, --config and --set KEY=VALUE, "
        "with -k, --category, --category-prior, --rerank and --regions as shorthands.",
    )
    p.add_argument("photo")
    settings_args(p, "--set category_prior=0.05 --set reranker.depth=20 --set max_pixels=20000000")
    p.add_argument("-k", type=int, default=None, help=f"number of matches (default {SearchConfig.k})")
    p.add_argument(
        "--category",
        default=None,
        help="auto (default: cosine plus a soft prior for the category the nearest products vote for) "
        "| any (cosine only) | a category name",
    )
    category_prior_arg(p, SearchConfig.category_prior)
    p.add_argument(
        "--box",
        metavar="X0,Y0,X1,Y1",
        help="search only this part of the photo: fractions 0..1 of the upright photo's width and "
        "height, e.g. 0.5,0.6,1,1 for the lower right",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FILTER",
        help="attribute filter, repeatable (ANDed): 'price<=50', 'brand in (acme,zeta)', "
        "'in_stock=true', 'colour!=red'",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
    store_arg(p)
    p.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    p.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="verify the first 10 products with local features (ORB + RANSAC) and move the first that "
        "shows the same surface as the photo to the top: the exact item first more often, for a "
        "few ms per search (default: on; --no-rerank: the embedding's order, docs/serving.md)",
    )
    p.add_argument(
        "--regions",
        default=None,
        help="parts of the photo searched beside it, in the same model call: none (default) or centre "
        "(its centre 80%%; a product scores its best part, and the part that gave the first is printed); "
        "not with --box",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="also save the query and its matches as a PNG")
    p.set_defaults(func=cmd_search)
