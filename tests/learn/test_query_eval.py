import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ColourEmbedder, solid

from vsearch import cli
from vsearch import config as c
from vsearch.errors import DataError
from vsearch.learn import query_eval as qe

# ---------------------------------------------------------------- figures on hand-built rankings


def test_target_ranks_find_the_product_or_inf():
    ranked = [["a", "b", "c"], ["b", "a"], ["c"], []]
    ranks = qe.target_ranks(ranked, ["a", "a", "x", "a"])
    assert ranks.tolist() == [0.0, 1.0, math.inf, math.inf]


def test_recall_at_k():
    ranks = np.array([0, 1, np.inf, 4, 9])
    assert qe.recall_at(ranks, (1, 2, 5, 10)) == {"recall@1": 0.2, "recall@2": 0.4, "recall@5": 0.6, "recall@10": 0.8}
    assert math.isnan(qe.recall_at(np.array([]), (1,))["recall@1"])


def test_a_short_answer_list_is_no_hit():
    """A catalog of 2 products answers 2: a product absent from them is a miss at every k."""
    ranks = qe.target_ranks([["a", "b"]], ["z"])
    assert qe.recall_at(ranks, (1, 5, 10)) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0}


def test_category_at_1_leaves_out_queries_without_a_category():
    assert qe.category_at_1(["hats", "shoes", "hats", "bags"], ["hats", "hats", "", "bags"]) == pytest.approx(2 / 3)
    assert math.isnan(qe.category_at_1(["hats"], [""]))


def test_figures_per_category():
    ranks = np.array([0, 3, np.inf, 0])
    first = ["hats", "hats", "shoes", "shoes"]
    expected = ["hats", "hats", "hats", ""]
    out = qe.per_category(ranks, first, expected, (1, 5))
    assert out["hats"] == {"recall@1": 1 / 3, "recall@5": 2 / 3, "category@1": 2 / 3, "queries": 3}
    assert out[qe.NO_CATEGORY]["recall@1"] == 1.0 and math.isnan(out[qe.NO_CATEGORY]["category@1"])
    assert qe.figures(ranks, first, expected, (1,)) == {"recall@1": 0.5, "category@1": 2 / 3, "queries": 4}


def test_confusions_most_frequent_first():
    first = ["b", "b", "a", "c", "c", "a", "b"]
    targets = ["a", "a", "a", "a", "b", "b", "b"]
    assert qe.confusions(first, targets) == [("a", "b", 2), ("a", "c", 1), ("b", "a", 1), ("b", "c", 1)]
    assert qe.confusions(first, targets, top=1) == [("a", "b", 2)]


# ---------------------------------------------------------------- the run on a tiny shop, a numpy model


def manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("product_id,image,category\n" + "".join(f"{p},{i},{c}\n" for p, i, c in rows))
    return path


@pytest.fixture
def shop(tmp_path):
    """A catalog of three products in two categories, and five query photos: three of
    catalog products, one of a product the catalog lacks, one unreadable."""
    root = tmp_path / "shop"
    solid(root / "catalog" / "red.png", (250, 10, 10))
    solid(root / "catalog" / "pink.png", (250, 120, 140))
    solid(root / "catalog" / "green.png", (10, 240, 10))
    solid(root / "phone" / "red.jpg", (235, 25, 20), size=(64, 48))
    solid(root / "phone" / "pink.jpg", (240, 130, 150), size=(64, 48))
    solid(root / "phone" / "green.jpg", (20, 225, 30), size=(64, 48))
    solid(root / "phone" / "blue.jpg", (10, 20, 240), size=(64, 48))
    (root / "phone" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    catalog = manifest(
        root / "catalog.csv",
        [
            ("red-hat", "catalog/red.png", "hats"),
            ("pink-hat", "catalog/pink.png", "hats"),
            ("green-shoe", "catalog/green.png", "shoes"),
        ],
    )
    queries = manifest(
        root / "queries.csv",
        [
            ("red-hat", "phone/red.jpg", "hats"),
            ("pink-hat", "phone/pink.jpg", "hats"),
            ("green-shoe", "phone/green.jpg", "shoes"),
            ("blue-bag", "phone/blue.jpg", "bags"),
            ("red-hat", "phone/broken.jpg", "hats"),
        ],
    )
    return catalog, queries


class Inverted(ColourEmbedder):
    """Another numpy model with its own fingerprint: a stand-in for the frozen baseline."""

    fingerprint = "inverted-v1"

    def embed_pixels(self, pixels):
        return super().embed_pixels(255.0 - np.asarray(pixels, np.float32))


def test_every_road_on_a_tiny_shop(shop):
    catalog, queries = shop
    models = [qe.model_roads("colour", ColourEmbedder()), qe.baseline_roads("inverted", Inverted())]
    lines: list[str] = []
    out = qe.evaluate_queries(catalog, queries, models, batch_size=2, log=lines.append)
    assert list(out["roads"]) == ["served", "cosine", "frozen"]
    q = out["queries"]
    assert (q["photos"], q["evaluated"], q["products"]) == (5, 4, 4)
    assert list(q["unreadable"]) == [str(catalog.parent / "phone" / "broken.jpg")]
    assert q["not_in_catalog"] == 1 and q["not_in_catalog_products"] == ["blue-bag"]
    assert q["also_catalog_photos"] == 0
    assert out["catalog"]["products"] == 3 and out["catalog"]["categories"] == 2
    for key in ("served", "cosine"):
        road = out["roads"][key]
        assert road["overall"] == {
            "recall@1": 0.75,
            "recall@5": 0.75,
            "recall@10": 0.75,
            "category@1": 0.75,
            "queries": 4,
        }
        assert road["per_category"]["hats"]["recall@1"] == 1.0
        assert road["per_category"]["bags"] == {
            "recall@1": 0.0,
            "recall@5": 0.0,
            "recall@10": 0.0,
            "category@1": 0.0,
            "queries": 1,
        }
    assert out["roads"]["served"]["category"] == "auto" and out["roads"]["served"]["rerank"] is True
    assert out["roads"]["cosine"]["category"] == "any" and out["roads"]["cosine"]["rerank"] is False
    assert out["roads"]["frozen"]["model"] == "inverted"
    assert [row["rank"]["served"] for row in out["per_query"]] == [0, 0, 0, None]
    assert any("served: colour, category auto + re-rank: R@1 0.750" in line for line in lines)
    json.dumps(out)  # plain values


def test_queries_that_are_catalog_photos_are_flagged(shop):
    catalog, _ = shop
    out = qe.evaluate_queries(catalog, catalog, [qe.model_roads("colour", ColourEmbedder())], log=lambda _: None)
    assert out["queries"]["also_catalog_photos"] == 3
    assert out["roads"]["cosine"]["overall"]["recall@1"] == 1.0
    assert "**3 query photos are also catalog photos**" in qe.format_markdown(with_provenance(out))


def test_roads_need_distinct_keys(shop):
    catalog, queries = shop
    twice = [qe.baseline_roads("a", ColourEmbedder()), qe.baseline_roads("b", Inverted())]
    with pytest.raises(DataError, match="distinct keys"):
        qe.evaluate_queries(catalog, queries, twice, log=lambda _: None)


def test_a_query_manifest_without_a_column_is_named(shop, tmp_path):
    catalog, _ = shop
    bad = tmp_path / "bad.csv"
    bad.write_text("product_id,photo\nred-hat,phone/red.jpg\n")
    with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) image, category"):
        qe.evaluate_queries(catalog, bad, [qe.model_roads("colour", ColourEmbedder())], log=lambda _: None)


def test_no_usable_query_photo_is_an_error(shop, tmp_path):
    catalog, _ = shop
    broken = manifest(tmp_path / "broken.csv", [("red-hat", str(catalog.parent / "phone" / "broken.jpg"), "hats")])
    with pytest.raises(DataError, match=r"none of the 1 query photos could be used, e.g. .*broken.jpg: "):
        qe.evaluate_queries(catalog, broken, [qe.model_roads("colour", ColourEmbedder())], log=lambda _: None)


def with_provenance(out: dict) -> dict:
    return {
        **out,
        "model": {"path": "m", "fingerprint": "f"},
        "config": {},
        "command": "vsearch eval",
        "commit": "abc",
        "date": "today",
        "machine": "here",
    }


# ---------------------------------------------------------------- the report and the command line


@pytest.fixture
def numpy_model(monkeypatch):
    """``load_embedder`` answers with the colour model, whatever the path."""
    from vsearch import embedder

    class Named(ColourEmbedder):
        name = "colour model"

    monkeypatch.setattr(embedder, "load_embedder", lambda path, num_threads=None: Named())


def test_run_writes_the_report_and_its_json(shop, tmp_path, numpy_model):
    catalog, queries = shop
    config = c.apply_overrides(c.EvalConfig(), {"baselines": False, "model_dir": "some/model"})
    out = tmp_path / "reports" / "real-shop.md"
    results = qe.run_query_eval(config, catalog, queries, out, log=lambda _: None)
    text = out.read_text()
    assert (
        "| **served: colour model (some/model), category auto + re-rank** | 0.750 | 0.750 | 0.750 | 0.750 | 4 |" in text
    )
    assert "| cosine: colour model (some/model) | 0.750 |" in text
    assert "Queries whose product is not in the catalog: 1 (blue-bag), misses on every road." in text
    assert "Query photos that could not be read, left out: 1" in text
    assert "| bags | 1 | 0.000 | 0.000 | 0.000 | 0.000 |" in text
    assert "| blue-bag |" in text  # its wrong first product is among the confusions
    assert f"Commit {results['commit']}" in text and "--no-baseline" in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["roads"]["served"]["overall"]["recall@1"] == 0.75 and saved["baseline"] is False
    assert saved["model"]["fingerprint"] == ColourEmbedder.fingerprint


def test_run_refuses_a_report_that_is_not_markdown(shop, tmp_path):
    catalog, queries = shop
    with pytest.raises(DataError, match="name a .md file"):
        qe.run_query_eval(c.EvalConfig(), catalog, queries, tmp_path / "report.json")


def test_cli_runs_on_manifests(shop, tmp_path, numpy_model, capsys):
    catalog, queries = shop
    code = cli.main(
        ["eval", "--queries", str(queries), "--catalog", str(catalog), "--no-baseline", "--reports", str(tmp_path)]
    )
    assert code == 0
    assert (tmp_path / "real-queries-in-catalog.md").is_file()
    assert "served: colour model" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--queries", "q.csv"], "--queries QUERIES and --catalog CATALOG go together"),
        (["--no-baseline"], "--queries QUERIES and --catalog CATALOG go together"),
        (["--queries", "q.csv", "--catalog", "c.csv", "--seed", "3"], "--seed: for the stage-3 evaluation"),
    ],
)
def test_cli_refuses_what_does_not_go_together(extra, message, capsys):
    assert cli.main(["eval", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_names_a_missing_manifest(tmp_path, capsys):
    args = ["eval", "--queries", str(tmp_path / "q.csv"), "--catalog", str(tmp_path / "c.csv"), "--no-baseline"]
    assert cli.main(args) == 2
    assert "c.csv: no such manifest file" in capsys.readouterr().err
