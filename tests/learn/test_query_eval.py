import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ColourEmbedder, solid
from PIL import Image

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


def framed(path: Path, inside, border, size: int = 50) -> Path:
    """A photo of ``inside`` filling the centre 80% (the centre region), framed by ``border``."""
    pixels = np.full((size, size, 3), border, np.uint8)
    edge = size // 10
    pixels[edge:-edge, edge:-edge] = inside
    Image.fromarray(pixels).save(path)
    return path


def test_the_served_road_with_the_default_settings_answers_as_before(shop, tmp_path):
    """regions none: the batch vector and the re-rank's model input, as the road before the
    search settings were the served road's (``make eval-real``'s figures stay)."""
    from vsearch.catalog.building import build_catalog
    from vsearch.catalog.search import Searcher
    from vsearch.embedder import embed_images

    catalog, queries = shop
    framed(catalog.parent / "phone" / "red-on-green.png", (250, 10, 10), (10, 240, 10))
    images = [str(p) for p in sorted((catalog.parent / "phone").glob("*.*")) if p.name != "broken.jpg"]
    store, _ = build_catalog(ColourEmbedder(), catalog, f"faiss:{tmp_path / 'c.vsi'}", kind="exact")
    searcher = Searcher(ColourEmbedder(), store)
    vectors = embed_images(ColourEmbedder(), images).vectors
    road = qe.model_roads("colour", ColourEmbedder(), c.SearchConfig()).roads[0]
    assert (road.key, road.category, road.rerank, road.regions) == ("served", "auto", True, "none")
    before = [
        searcher.search_vector(v, 10, "auto", rerank_query=searcher.model_input(image)).matches
        for v, image in zip(vectors, images)
    ]
    assert qe.answer_queries(searcher, vectors, images, road, 10) == before
    store.close()


def test_the_served_road_searches_with_the_search_settings(shop, tmp_path):
    """regions centre: a red product framed in green is pink to the whole photo, red to its centre."""
    from vsearch.catalog.building import build_catalog
    from vsearch.catalog.search import Searcher

    catalog, _ = shop
    photo = framed(catalog.parent / "phone" / "red-on-green.png", (250, 10, 10), (10, 240, 10))
    queries = manifest(tmp_path / "framed.csv", [("red-hat", str(photo), "hats")])
    thorough = c.preset(c.SearchConfig, "thorough")
    runs = {}
    for search in (c.SearchConfig(), thorough):
        runs[search.regions] = qe.evaluate_queries(
            catalog, queries, [qe.model_roads("colour", ColourEmbedder(), search)], log=lambda _: None
        )
    whole, centre = runs["none"]["roads"], runs["centre"]["roads"]
    assert (
        whole["served"]["overall"]["recall@1"] == 0.0 and runs["none"]["per_query"][0]["first"]["served"] == "pink-hat"
    )
    assert centre["served"]["overall"]["recall@1"] == 1.0 and centre["served"]["regions"] == "centre"
    assert centre["served"]["name"] == "served: colour, category auto + re-rank, regions centre"
    assert centre["cosine"]["overall"] == whole["cosine"]["overall"] and centre["cosine"]["regions"] == "none"
    assert runs["centre"]["searcher"]["regions"] == "centre" and runs["none"]["searcher"]["regions"] == "none"
    # the answer a server with these settings gives
    store, _ = build_catalog(ColourEmbedder(), catalog, f"faiss:{tmp_path / 'c.vsi'}", kind="exact")
    served = Searcher(ColourEmbedder(), store, thorough).search(photo, 10)
    assert served.region == (0.1, 0.1, 0.9, 0.9)
    assert runs["centre"]["per_query"][0]["first"]["served"] == served.matches[0]["product_id"] == "red-hat"
    store.close()


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


def test_the_report_states_the_search_settings_and_its_command_reproduces_them(shop, tmp_path, numpy_model, capsys):
    catalog, queries = shop
    out = tmp_path / "thorough.md"
    args = ["eval", "--queries", str(queries), "--catalog", str(catalog), "--no-baseline", "--out", str(out)]
    assert cli.main([*args, "--preset", "thorough", "--set", "search.reranker.depth=4"]) == 0
    text, saved = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert (
        "The served road answers as a server with these search settings: category auto (prior 0.02), re-rank "
        "of the first 4 with at least 20 inliers, regions centre (the whole photo and its centre" in text
    )
    assert "category auto + re-rank, regions centre** | 0.750 |" in text
    assert saved["searcher"]["regions"] == "centre" and saved["roads"]["served"]["regions"] == "centre"
    assert saved["config"]["search"]["regions"] == "centre"
    command = saved["command"]
    assert "--set search.reranker.depth=4 --set search.regions=centre" in command and f"`{command}`" in text
    # the command written gives the same settings back
    words = command.split()
    again = c.apply_overrides(c.EvalConfig(), c.parse_overrides([w for p, w in zip(words, words[1:]) if p == "--set"]))
    assert again.search == c.apply_overrides(c.preset(c.SearchConfig, "thorough"), {"reranker.depth": "4"})
    assert cli.main([*args]) == 0  # the defaults: the header as before, no --set
    text, command = out.read_text(), json.loads(out.with_suffix(".json").read_text())["command"]
    assert "re-rank of the first 10 with at least 20 inliers, regions none (the whole photo)" in text
    assert "--set" not in command and "category auto + re-rank** |" in text


def test_stage_3_refuses_search_settings_it_would_ignore(capsys):
    assert cli.main(["eval", "--preset", "thorough"]) == 2
    err = capsys.readouterr().err
    assert "search.regions=centre: the search settings are for --queries and --catalog" in err and err.count("\n") == 1


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
