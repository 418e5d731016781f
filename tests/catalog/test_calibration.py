"""The calibrated verdict (vsearch.catalog.calibration), kept with the index and shown by search."""

import json

import numpy as np
import pytest
from conftest import ColourEmbedder
from matplotlib.figure import Figure

from vsearch import cli
from vsearch.catalog import calibration as calibrate
from vsearch.catalog.building import build_catalog
from vsearch.catalog.calibration import Samples
from vsearch.catalog.manifest import Photo
from vsearch.catalog.search import Searcher
from vsearch.catalog.verdict import SYNTHETIC_FIT, calibration_summary, probability, ranked_features
from vsearch.errors import DataError
from vsearch.learn import plots
from vsearch.stores import build_store, open_store


@pytest.fixture
def catalog(shop, tmp_path):
    """The tiny shop as a faiss store."""
    store, _ = build_catalog(ColourEmbedder(), shop, f"faiss:{tmp_path / 'shop.vsi'}", kind="exact")
    yield store
    store.close()


def stored(path):
    store = open_store(str(path))
    store.close()
    return store


def samples(top1, gap, exact, present, category=None) -> Samples:
    n = len(top1)
    return Samples(
        np.asarray(top1, float),
        np.asarray(gap, float),
        np.asarray(category or [""] * n, dtype=object),
        np.asarray(exact, bool),
        np.asarray(present, bool),
    )


def world(seed: int, n: int = 400) -> Samples:
    """Searches where a high score and a wide gap mean the exact item, as a model's do."""
    rng = np.random.default_rng(seed)
    inside = rng.random(n) < 0.5
    top1 = np.where(inside, rng.normal(0.8, 0.08, n), rng.normal(0.55, 0.08, n))
    gap = np.where(inside, rng.exponential(0.12, n), rng.exponential(0.03, n))
    exact = inside & (rng.random(n) < 1 / (1 + np.exp(-(12 * (top1 - 0.65) + 20 * gap))))
    return samples(top1, gap, exact, inside, ["hats" if i % 4 == 0 else "shoes" for i in range(n)])


# ---------------------------------------------------------------- the fitting, by hand


def test_isotonic_pools_violators_into_known_steps():
    edges, values = calibrate.fit_isotonic(np.array([1, 2, 3, 4, 5, 6.0]), np.array([0, 1, 0, 1, 1, 1]))
    assert edges.tolist() == [1, 2, 4] and values.tolist() == [0, 0.5, 1]
    edges, values = calibrate.fit_isotonic(np.array([3, 1, 2, 2.0]), np.array([0, 1, 1, 0]))  # unsorted, a tie
    assert edges.tolist() == [1] and values.tolist() == [0.5]


def test_isotonic_is_monotone_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    z = rng.normal(size=500)
    y = rng.random(500) < 1 / (1 + np.exp(-2 * z))
    edges, values = calibrate.fit_isotonic(z, y)
    assert np.all(np.diff(edges) > 0) and np.all(np.diff(values) > 0)
    fitted = values[np.searchsorted(edges, z, side="right") - 1]
    assert fitted.mean() == pytest.approx(y.mean())


def test_platt_on_separable_data_is_finite_with_known_probabilities():
    # n at -1 all wrong, n at +1 all right: Platt's targets make p(+1) = (n+1)/(n+2), p(-1) = 1/(n+2).
    n = 5
    x = np.r_[-np.ones(n), np.ones(n)]
    coef, intercept = calibrate.fit_platt(x[:, None], x > 0)
    assert coef[0] == pytest.approx(np.log(n + 1)) and intercept == pytest.approx(0, abs=1e-9)
    model = calibrate.fit_model(x * 0.1 + 0.7, np.full(2 * n, 0.2), x > 0, "platt")  # a constant gap
    assert probability(model, [0.8, 0.6], [0.2, 0.2]) == pytest.approx([(n + 1) / (n + 2), 1 / (n + 2)])


def test_isotonic_model_gives_the_step_values():
    top1 = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    model = calibrate.fit_model(top1, np.zeros(6), np.array([0, 1, 0, 1, 1, 1]), "isotonic")
    assert probability(model, top1, np.zeros(6)).tolist() == [0, 0.5, 0.5, 1, 1, 1]
    assert probability(model, [0.0, 2.0], [0, 0]).tolist() == [0, 1]  # beyond the ends: the end steps


def test_expected_calibration_error_by_hand():
    p, y = np.array([0.05, 0.15, 0.95, 0.95]), np.array([0, 1, 1, 0])
    # bin 0: |0 - .05|, bin 1: |1 - .15|, bin 9: |.5 - .95|, weighted 1/4, 1/4, 2/4
    assert calibrate.expected_calibration_error(p, y) == pytest.approx(0.05 / 4 + 0.85 / 4 + 0.45 / 2)
    curve = calibrate.reliability(p, y)
    assert curve["count"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2] and curve["confidence"][2] is None
    assert curve["frequency"][9] == 0.5
    assert calibrate.expected_calibration_error(np.array([0.3, 0.3, 0.3]), np.array([0, 0, 1])) == pytest.approx(1 / 30)


def test_threshold_for_precision_by_hand():
    p, y = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0])
    assert calibrate.threshold_for_precision(p, y, 0.75, z=0) == 0.6  # 3 of the top 4
    assert calibrate.threshold_for_precision(p, y, 0.95, z=0) == 0.8
    assert calibrate.threshold_for_precision(p, y, 0.5, z=0) == 0.5
    assert calibrate.threshold_for_precision(np.array([0.9, 0.9]), np.array([1, 0]), 0.9, z=0) is None  # a tie
    assert calibrate.threshold_for_precision(p[2:], y[2:] * 0, 0.5, z=0) is None


def test_thresholds_hold_at_90_percent_confidence():
    # n right answers out of n: the Wilson lower bound is 1 / (1 + z^2 / n), >= 0.95 from n = 19 z^2 = 31.2
    z = calibrate.CONFIDENCE_Z
    lower, upper = calibrate.wilson_interval(20, 20, z)
    assert lower == pytest.approx(1 / (1 + z * z / 20)) and upper == pytest.approx(1)
    assert calibrate.threshold_for_precision(np.linspace(1, 0.5, 31), np.ones(31, bool), 0.95) is None
    assert calibrate.threshold_for_precision(np.linspace(1, 0.5, 32), np.ones(32, bool), 0.95) == 0.5
    # at most 5% at or below a cut: with z = 0, 5 of 100; at 90% confidence 2 of 100 (Wilson upper bounds:
    # 1 in 100 3.3%, 2 in 100 4.7%, 3 in 100 6.0%)
    scores = np.arange(100) / 100
    assert calibrate.threshold_for_rate(scores, 0.05, z=0) == 0.04
    assert calibrate.threshold_for_rate(scores, 0.05) == 0.01
    assert calibrate.threshold_for_rate(scores, 0.04) == 0.0
    assert calibrate.threshold_for_rate(np.r_[np.zeros(10), scores], 0.05) is None  # a tie of ten: too many


def test_fit_calibration_chooses_by_held_out_ece_and_meets_its_target_on_new_seeds():
    fit, check, heldout = world(1), world(2), world(3)
    calibration = calibrate.fit_calibration(fit, check, "model-1", target=0.9)
    for head in ("exact", "present"):
        eces = calibration["selection_ece"][head]
        assert calibration["method"][head] == min(eces, key=eces.get)
    assert set(calibration["heads"]["exact"]["categories"]) == {"shoes"}  # hats: 100 samples, too few
    figures = calibrate.verdict_metrics(calibration, heldout)
    assert figures["exact_precision"] >= 0.85 and figures["exact_coverage"] > 0.3
    assert figures["none_on_left_out"] > 0.5 and figures["none_on_in_catalog"] < 0.1
    assert figures["ece_exact"] < 0.08 and figures["num_left_out"] == int((~heldout.present).sum())
    json.dumps(calibration, allow_nan=False)  # stored in the index header as plain JSON


def test_isotonic_wins_where_the_truth_is_a_step():
    rng = np.random.default_rng(0)

    def step_world(n=600):
        top1 = rng.uniform(0, 1, n)
        exact = rng.random(n) < np.where(top1 < 0.5, 0.3, 0.97)
        return samples(top1, np.zeros(n), exact, np.ones(n, bool))

    method, eces = calibrate.choose_method(step_world(), step_world(), "exact")
    assert method == "isotonic" and eces["isotonic"] < eces["platt"]


# ---------------------------------------------------------------- leave-one-out on a tiny catalog


def test_query_samples_search_with_the_item_and_with_its_product_left_out(tmp_path):
    vectors = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 0.6, 0.8]], np.float32)
    photos = [
        Photo("a", "a", "/a.png", "hats"),
        Photo("b", "b", "/b.png", "hats"),
        Photo("c", "c1", "/c1.png", "shoes"),
        Photo("c", "c2", "/c2.png", "shoes"),
        Photo("d", "d", "/d.png", "shoes"),
    ]
    catalog = build_store(f"faiss:{tmp_path / 'tiny.vsi'}", photos, vectors, fingerprint="v1", kind="exact")
    queries = np.array([[1, 0, 0], [0.6, 0.8, 0]], np.float32)
    s = calibrate.query_samples(catalog, queries, ["a", "c"])
    # in the catalog: a finds a (1; b .8: gap .2); c's photo finds c1 (1), its gap skips c2 (same product) to b (.96)
    # left out: a's photo finds b (.8; c1 .6: gap .2); c's photo, c1 and c2 gone, finds b (.96; a .6: gap .36)
    assert s.present.tolist() == [True, True, False, False]
    assert s.exact.tolist() == [True, True, False, False]
    assert s.top1 == pytest.approx([1, 1, 0.8, 0.96])
    assert s.gap == pytest.approx([0.2, 1 - 0.96, 0.2, 0.36])
    assert s.category.tolist() == ["hats", "shoes", "hats", "hats"]


def test_customer_photos_are_seeded_and_skip_unreadable_items(shop):
    items = [{"id": p.stem, "path": str(p)} for p in sorted(shop.rglob("*.*")) if not p.name.startswith(".")]
    items.append({"id": "gone", "path": str(shop / "gone.png")})
    photos, ids = calibrate.customer_photos(items, 10, seed=3)
    again, same_ids = calibrate.customer_photos(items, 10, seed=3)
    assert ids == same_ids and all(np.array_equal(a, b) for a, b in zip(photos, again))
    assert len(ids) == 8 and "gone" not in ids and set(ids) == {"red", "pink", "green", "olive"}
    # made in parts, the same photos (seed 3 takes "gone" first: its turns are photos 0 and 5)
    tail, tail_ids = calibrate.customer_photos(items, 4, seed=3, start=6)
    assert tail_ids == ids[-4:] and all(np.array_equal(a, b) for a, b in zip(tail, photos[-4:]))
    other, _ = calibrate.customer_photos(items, 10, seed=4)
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(photos, other))


# ---------------------------------------------------------------- kept with the index, shown by search


def hand_calibration(fingerprint: str) -> dict:
    return calibrate.fit_calibration(world(1), world(2), fingerprint, target=0.9)


def test_calibration_is_kept_with_the_store(tmp_path, catalog):
    assert catalog.calibration is None
    calibration = hand_calibration(ColourEmbedder.fingerprint)
    catalog.set_calibration(calibration)
    assert stored(tmp_path / "shop.vsi").calibration == json.loads(json.dumps(calibration))  # persisted
    with pytest.raises(DataError, match="was made with model other"):
        catalog.set_calibration(hand_calibration("other"))
    broken = hand_calibration(ColourEmbedder.fingerprint)
    broken["heads"]["exact"]["global"]["coef"] = "steep"
    with pytest.raises(DataError, match="damaged 'exact' model"):
        catalog.set_calibration(broken)
    assert stored(tmp_path / "shop.vsi").calibration == json.loads(json.dumps(calibration))  # refused: unchanged


def test_search_results_carry_the_verdict(shop, catalog):
    searcher = Searcher(ColourEmbedder(), catalog)
    photo = (shop / "shoes" / "olive.png").read_bytes()
    assert "match" not in searcher.search(photo, 1).to_dict()  # no calibration, no verdict
    calibration = hand_calibration(ColourEmbedder.fingerprint)
    catalog.set_calibration(calibration)
    result = searcher.search(photo, 1).to_dict()
    top1, gap = ranked_features(
        [m["score"] for m in searcher.search(photo, 4).matches],
        [m["product_id"] for m in searcher.search(photo, 4).matches],
    )
    expected = probability(
        calibration["heads"]["exact"]["categories"].get("shoes") or calibration["heads"]["exact"]["global"], top1, gap
    )[0]
    assert len(result["matches"]) == 1 and result["match"]["confidence"] == pytest.approx(expected, abs=1e-4)
    assert result["match"]["verdict"] in ("exact", "similar", "none")
    sure = {**calibration, "thresholds": {"exact": 0.0, "none": None}}
    catalog.set_calibration(sure)
    assert searcher.search(photo, 2, category="hats").to_dict()["match"]["verdict"] == "exact"
    catalog.set_calibration({**calibration, "thresholds": {"exact": None, "none": 1.0}})
    assert (
        searcher.search_vector(ColourEmbedder().embed_pixels(np.zeros((1, 8, 8, 3)))[0], 3).match["verdict"] == "none"
    )


def test_calibrate_catalog_with_a_transparent_model(shop, catalog):
    logs = []
    calibration = calibrate.calibrate_catalog(catalog, ColourEmbedder(), photos=12, seed=5, log=logs.append)
    assert calibration["seeds"] == {"fit": 5, "check": 6, "heldout": 7} and len(logs) == 3
    assert calibration["heldout"]["num_in_catalog"] == calibration["heldout"]["num_left_out"] == 12
    assert calibration["wrong_none"] == calibrate.DEFAULT_WRONG_NONE
    looser = calibrate.calibrate_catalog(catalog, ColourEmbedder(), photos=12, seed=5, log=logs.append, wrong_none=0.5)
    assert looser["wrong_none"] == 0.5  # "none" allowed on half the in-catalog photos: said at least as often
    assert (looser["thresholds"]["none"] or 0) >= (calibration["thresholds"]["none"] or 0)
    catalog.set_calibration(calibration)
    match = Searcher(ColourEmbedder(), catalog).search(shop / "hats" / "red.jpg", 2).match
    assert match["verdict"] in ("exact", "similar", "none") and 0 <= match["confidence"] <= 1
    other = ColourEmbedder()
    other.fingerprint = "colour-v2"
    with pytest.raises(DataError, match="calibrate with the catalog's model"):
        calibrate.calibrate_catalog(catalog, other, photos=4)


def test_without_labelled_photos_the_calibration_says_it_is_synthetic(shop, catalog):
    calibration = calibrate.calibrate_catalog(catalog, ColourEmbedder(), photos=12, seed=5, log=lambda _: None)
    assert calibration["fitted_on"] == {"kind": "synthetic", "description": SYNTHETIC_FIT, "photos": 12}
    assert calibration["heldout"]["photos"] == "synthetic photos of seed 7"
    assert "fitted on synthetic photos from the catalog: no labelled real photos given" in calibrate.format_calibration(
        calibration
    )
    summary = calibration_summary(calibration)
    assert summary["fitted_on"] == "synthetic" and summary["heldout"]["num_in_catalog"] == 12
    catalog.set_calibration(calibration)
    assert Searcher(ColourEmbedder(), catalog).search(shop / "hats" / "red.jpg", 2).match["fitted_on"] == "synthetic"
    older = hand_calibration(ColourEmbedder.fingerprint)  # stored before calibrations said what they were fitted on
    assert calibration_summary(older)["description"] == SYNTHETIC_FIT
    catalog.set_calibration(older)
    assert Searcher(ColourEmbedder(), catalog).search(shop / "hats" / "red.jpg", 2).match["fitted_on"] == "synthetic"


def test_verdict_metrics_count_the_exact_answers_and_never_say_none_to_a_verified_match():
    world_samples = world(4)
    calibration = {**hand_calibration("m"), "thresholds": {"exact": 0.5, "none": 0.999}}
    said, _, _ = calibrate.sample_verdicts(calibration, world_samples)
    figures = calibrate.verdict_metrics(calibration, world_samples)
    answers = int((said == "exact").sum())
    assert figures["num_exact"] == answers > 0 and figures["exact_precision_low"] < figures["exact_precision"]
    verified = world_samples.take(np.arange(len(world_samples)))
    verified.verified = np.ones(len(world_samples), bool)
    again, _, _ = calibrate.sample_verdicts(calibration, verified)
    assert (said == "none").any() and not (again == "none").any()
    assert np.array_equal(again == "similar", (said == "similar") | (said == "none"))


def test_reliability_diagram_is_a_figure():
    curves = calibrate.reliability_curves(hand_calibration("m"), world(3))
    fig = plots.reliability_diagram(curves, "held out")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 3  # the diagonal and one curve per head


# ---------------------------------------------------------------- the command line, with a tiny exported model


def test_cli_calibrate_then_search_shows_the_verdict(tiny, tmp_path, capsys):
    model, index = str(tiny["model"]), str(tmp_path / "catalog.vsi")
    assert cli.main(["index", "build", str(tiny["data"] / "train"), "--model", model, "--store", index]) == 0
    assert cli.main(["calibrate", "--model", model, "--store", index, "--photos", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "calibration for target precision 0.95, fitted on synthetic photos from the catalog" in out
    assert "held-out synthetic photos of seed 3" in out
    kept = stored(index).calibration
    assert kept["fingerprint"] == tiny["saved"].fingerprint and kept["photos"] == 8
    photo = str(tiny["photos"][0])
    assert cli.main(["search", photo, "--model", model, "--store", index, "--json", "-k", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["match"]) == {"verdict", "confidence", "fitted_on"} and len(result["matches"]) == 2
    assert result["match"]["fitted_on"] == "synthetic"
    assert cli.main(["search", photo, "--model", model, "--store", index, "-k", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        first
        == {
            "exact": f"This is it ({result['match']['confidence']:.2f})",
            "similar": "Similar items",
            "none": "Not in the catalog",
        }[result["match"]["verdict"]]
    )
    assert cli.main(["index", "info", "--store", index]) == 0
    assert "'exact' when P(exact) >=" in capsys.readouterr().out
    some_id = next(iter(stored(index).products())).product_id
    assert cli.main(["index", "remove", some_id, "--store", index]) == 0
    assert "keeps the calibration fitted before this change" in capsys.readouterr().err  # not silently stale


def test_cli_build_with_calibrate_and_refusals(tiny, tmp_path, capsys):
    model, index = str(tiny["model"]), str(tmp_path / "catalog.vsi")
    assert (
        cli.main(
            [
                "index",
                "build",
                str(tiny["data"] / "train"),
                "--model",
                model,
                "--store",
                index,
                "--calibrate",
                "--photos",
                "6",
            ]
        )
        == 0
    )
    assert stored(index).calibration["photos"] == 6
    capsys.readouterr()
    assert cli.main(["calibrate", "--model", model, "--store", index, "--target-precision", "1.5"]) == 2
    assert "--target-precision must be between 0 and 1" in capsys.readouterr().err
    assert cli.main(["calibrate", "--model", model, "--store", index, "--wrong-none", "0"]) == 2
    assert "--wrong-none must be between 0 and 1" in capsys.readouterr().err
    assert cli.main(["calibrate", "--model", str(tiny["files"]["int8"]), "--store", index, "--photos", "4"]) == 2
    assert "rebuild the index with this model" in capsys.readouterr().err
    assert stored(index).calibration["photos"] == 6  # the refused run changed nothing


# ---------------------------------------------------------------- vsearch eval's figures


def test_eval_measures_the_verdict_on_validation_items_it_never_saw(image_root):
    from types import SimpleNamespace

    from vsearch.learn import evaluate

    names = ["blue", "green", "red"]

    def split(name):
        paths = sorted(str(p) for p in (image_root / name).rglob("*.*"))
        return SimpleNamespace(paths=paths, labels=np.array([names.index(p.split("/")[-2]) for p in paths]))

    catalog, val = split("train"), split("validation")
    embedder = ColourEmbedder()
    cat, qry = (evaluate.embed_all(embedder, s.paths, 8) for s in (catalog, val))
    photos, targets = evaluate.customer_queries(val.paths, seed=7)
    cust = evaluate.embed_all(embedder, photos, 8)
    figures, curves = evaluate.calibration_check(embedder, catalog, val, names, cat, qry, cust, targets, 8)
    assert figures["num_in_catalog"] == figures["num_left_out"] == len(val.paths) == 9
    assert figures["photos_per_seed"] == len(catalog.paths) == 18 and figures["seeds"] == {"fit": 0, "check": 1}
    assert figures["target_precision"] == calibrate.DEFAULT_TARGET
    assert set(figures["targets_met"]) == set(calibrate.TARGETS)
    assert sum(curves["top-1 is the exact item"]["count"]) == 18
    text = "\n".join(evaluate._calibration_markdown(figures))
    assert "## Calibrated verdict" in text and "| 'none' on left-out photos |" in text
