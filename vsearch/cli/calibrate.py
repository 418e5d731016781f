"""``vsearch calibrate`` (and ``index build --calibrate``): what a search answer means, kept with the catalog."""

from __future__ import annotations

from vsearch.cli.common import (
    DEFAULT_MODEL,
    UsageError,
    embedder_of,
    log_err,
    serving_settings,
    settings_args,
    store_arg,
    store_of,
)


def cmd_calibrate(args) -> int:
    from vsearch.config import SearchConfig

    check_calibration_args(args)
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:  # before the model loads: its output is the one line
            raise UsageError(f"{flag} must be >= 1, got {value}")
    settings = serving_settings(SearchConfig, args, {})
    check_settings_need_queries(settings, args.queries)
    if args.queries:
        from vsearch.catalog.manifest import read_queries

        read_queries(args.queries)  # a bad manifest is one line before the model loads
    embedder = embedder_of(args)
    store = store_of(args, embedder)
    calibrate(store, embedder, args, settings)
    print(f"wrote the calibration into {store.spec}")
    return 0


def check_calibration_args(args) -> None:
    if not 0 < args.target_precision < 1:
        raise UsageError(f"--target-precision must be between 0 and 1, got {args.target_precision}")
    if not 0 < args.wrong_none < 1:
        raise UsageError(f"--wrong-none must be between 0 and 1, got {args.wrong_none}")
    if args.photos < 1:
        raise UsageError(f"--photos must be >= 1, got {args.photos}")
    if not args.model:
        raise UsageError("--calibrate needs --model: it searches customer photos made from the catalog")


def check_settings_need_queries(settings, queries: str | None) -> None:
    """Search settings other than the defaults are the road of a calibration on labelled photos
    (``--queries``): the synthetic one searches whole photos by plain cosine whatever they say."""
    from vsearch.config import overrides_from

    changed = overrides_from(settings)
    if changed and not queries:
        raise UsageError(
            f"search setting {changed[0]} needs --queries: without labelled photos the calibration "
            "searches simulated photos, whole, by plain cosine, whatever the settings"
        )


def calibrate(store, embedder, args, settings=None) -> None:
    """Calibrates ``store``'s answers and keeps the calibration in it (``vsearch calibrate``,
    ``index build --calibrate``); writes to the store meanwhile are kept. With ``--queries`` the
    photos are searched with ``settings`` (a :class:`~vsearch.config.SearchConfig`; default: its defaults)."""
    from vsearch.catalog.calibration import calibrate_catalog, format_calibration
    from vsearch.catalog.real_calibration import calibrate_on_queries
    from vsearch.config import SearchConfig

    if getattr(args, "queries", None):
        calibration = calibrate_on_queries(
            store,
            embedder,
            args.queries,
            args.target_precision,
            args.wrong_none,
            args.seed,
            config=settings or SearchConfig(),
            log=log_err,
        )
    else:
        calibration = calibrate_catalog(
            store,
            embedder,
            args.target_precision,
            args.photos,
            args.seed,
            getattr(args, "batch_size", 32),
            log=log_err,
            wrong_none=args.wrong_none,
        )
    store.set_calibration(calibration)
    print(format_calibration(calibration))


def warn_stale_calibration(store) -> None:
    """A calibration kept through an add or remove describes the catalog as it was."""
    if store.calibration:
        log_err(
            f"note: {store.spec} keeps the calibration fitted before this change; run `vsearch calibrate "
            f"--store {store.spec}` again after large changes"
        )


def calibration_args(q) -> None:
    """The calibration's flags, shared by ``vsearch calibrate`` and ``index build --calibrate``."""
    from vsearch.catalog.calibration import DEFAULT_PHOTOS, DEFAULT_SEED, DEFAULT_TARGET, DEFAULT_WRONG_NONE

    q.add_argument(
        "--target-precision",
        type=float,
        default=DEFAULT_TARGET,
        help="precision of 'exact' answers (default %(default)s)",
    )
    q.add_argument(
        "--wrong-none",
        type=float,
        default=DEFAULT_WRONG_NONE,
        help="the most in-catalog photos 'none' (not in the catalog) may be said to (default %(default)s)",
    )
    q.add_argument(
        "--photos",
        type=int,
        default=DEFAULT_PHOTOS,
        help="simulated customer photos per seed; three seeds: fit, thresholds, check (default %(default)s)",
    )
    q.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="first of the three seeds of the customer photos (default %(default)s)",
    )


def add_calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="learn what a search answer means: exact item, similar, not in the catalog",
        description="Search customer photos, with their item in the index and left out: with "
        "--queries, the shop's own labelled photos, answered as the server answers them; without, "
        "simulated ones made from the catalog's photos. Fit calibrated probabilities (per category "
        "where there are enough photos) and the thresholds for the target precision, state the precision "
        "on photos the fit did not see, and store them in the index, so every search result "
        "carries match: {verdict, confidence, fitted_on}. With --queries the photos are searched with the "
        "search settings (--preset, --set, --config: those `vsearch serve` takes under search.*, e.g. "
        "--preset thorough); calibrate with the settings the server serves with.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"SavedModel folder or .tflite (default {DEFAULT_MODEL})")
    p.add_argument(
        "--queries",
        metavar="MANIFEST",
        help="labelled real customer photos to fit on (.csv, .jsonl, .parquet: product_id, image, optional "
        "category; image paths relative to the manifest); photos of products not in the catalog are the "
        "'none' side, else each photo is searched again with its product left out; the precision is "
        "measured on 5 folds by product (--seed deals them)",
    )
    store_arg(p)
    settings_args(p, "--set regions=centre --set reranker.depth=20", shorthands=False)
    p.add_argument("--threads", type=int, default=None, help="inference threads (TFLite)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
    calibration_args(p)
    p.set_defaults(func=cmd_calibrate)
