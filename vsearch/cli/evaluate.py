"""``vsearch eval``: stage 3's metrics and pictures, or real labelled photos against a catalog."""

from __future__ import annotations

from vsearch.cli.common import UsageError, build_config, config_args


def cmd_eval(args) -> int:
    from vsearch.config import EvalConfig, overrides_from
    from vsearch.images import load_image
    from vsearch.learn.evaluate import run_eval

    if args.queries or args.catalog or args.out or args.no_baseline:
        return eval_queries(args)
    config = build_config(
        EvalConfig,
        args,
        {
            "model_dir": args.model,
            "reports_dir": args.reports,
            "seed": args.seed,
            "num_threads": args.threads,
            "reference_dir": args.reference,
        },
    )
    changed = overrides_from(config.search)
    if changed:  # stage 3's served ranking is the Searcher's defaults: a setting would be ignored
        raise UsageError(f"search.{changed[0]}: the search settings are for --queries and --catalog, not stage 3")
    if args.query:
        load_image(args.query, config.data.max_image_pixels)  # fail fast, before loading models
    run_eval(config, query=args.query)
    return 0


def eval_queries(args) -> int:
    """``vsearch eval --queries Q --catalog C``: real labelled photos against a catalog manifest."""
    from vsearch.config import EvalConfig
    from vsearch.learn.query_eval import default_report, run_query_eval

    if not (args.queries and args.catalog):
        raise UsageError(
            "--queries QUERIES and --catalog CATALOG go together (both manifests); --out and "
            "--no-baseline belong to them"
        )
    stray = [
        flag
        for flag, value in (("--query", args.query), ("--seed", args.seed), ("--reference", args.reference))
        if value
    ]
    if stray:
        raise UsageError(f"{', '.join(stray)}: for the stage-3 evaluation, not with --queries")
    extra = {"model_dir": args.model, "reports_dir": args.reports, "num_threads": args.threads}
    if args.no_baseline:
        extra["baselines"] = "false"
    config = build_config(EvalConfig, args, extra)
    run_query_eval(
        config, args.catalog, args.queries, args.out or default_report(config.reports_dir, args.catalog, args.queries)
    )
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="stage 3: retrieval metrics and pictures",
        description="Embed the catalog (train split) and the validation queries with the "
        "exported model; compare with the baselines; write reports/.",
    )
    config_args(p)
    p.add_argument("--model", help="exported SavedModel folder (model_dir)")
    p.add_argument("--reports", help="output folder (reports_dir)")
    p.add_argument("--seed", help="seed for the random query and the customer photos")
    p.add_argument("--query", help="any photo to search with in retrieval.png instead of a random one")
    p.add_argument("--threads", type=int, help="a .tflite --model: decoding and inference threads (num_threads)")
    p.add_argument(
        "--reference",
        help="a .tflite --model: the SavedModel to measure parity against (default: the one it was converted from)",
    )
    real = p.add_argument_group(
        "real photos",
        "labelled customer photos against a catalog, both manifests (product_id, image, category, ...): "
        "R@1/5/10 and top-1 category of the served road, the plain cosine and frozen ImageNet features; the "
        "served road answers with the search settings search.* (--preset thorough: the photo's centre too; "
        "--set search.regions=centre, --set search.rerank=false, ...), as `vsearch serve` with them would",
    )
    real.add_argument("--queries", metavar="MANIFEST", help="the labelled query photos, one per row")
    real.add_argument(
        "--catalog", metavar="MANIFEST", help="the catalog to search (a manifest or a <category>/ folder)"
    )
    real.add_argument(
        "--out", help="the markdown report, JSON beside it (default REPORTS/real-<queries>-in-<catalog>.md)"
    )
    real.add_argument("--no-baseline", action="store_true", help="leave out the frozen ImageNet road")
    p.set_defaults(func=cmd_eval)
