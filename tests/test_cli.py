import subprocess
import sys

import pytest
from conftest import awkward_files

from vsearch import cli


@pytest.mark.parametrize("command", ["data", "train", "siamese", "eval"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "usage: vsearch " + command in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "vsearch", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("vsearch ")


def test_bad_override_exits_2_with_one_line(capsys):
    assert cli.main(["train", "--set", "no_such=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key 'no_such'" in err[0]


def test_bad_config_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{")
    for path in (tmp_path / "missing.json", tmp_path / "broken.json"):
        assert cli.main(["train", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0]


def test_data_refuses_to_write_into_its_source(image_root, capsys):
    before = sorted(p for p in image_root.rglob("*"))
    assert (
        cli.main(
            [
                "data",
                "--source",
                str(image_root),
                "--dest",
                str(image_root),
                "--classes",
                "blue,green,red",
                "--feature-cache-dir",
                "",
            ]
        )
        == 2
    )
    assert "overlaps --source" in capsys.readouterr().err
    assert sorted(p for p in image_root.rglob("*")) == before


def test_missing_data_folder_exits_2(tmp_path, capsys):
    assert cli.main(["data", "--source", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_data_command_copies_and_reports(image_root, tmp_path, capsys):
    assert (
        cli.main(
            [
                "data",
                "--source",
                str(image_root),
                "--dest",
                str(tmp_path / "out"),
                "--classes",
                "blue,green,red",
                "--feature-cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert (tmp_path / "cache" / "image-checks.json").is_file()  # for the stages, not in the checkout
    out = capsys.readouterr().out
    assert "| train | 6 | 6 | 6 | 18 |" in out


@pytest.mark.parametrize("name, reason", [("corrupt", "corrupt"), ("empty", "empty"), ("text", "not a recognised")])
def test_eval_bad_query_exits_2_naming_the_file(tmp_path, capsys, name, reason):
    files = awkward_files(tmp_path / "q")
    assert cli.main(["eval", "--query", str(files[name]), "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(files[name]) in err and reason in err and len(err.splitlines()) == 1


def test_eval_missing_query_file(tmp_path, capsys):
    assert cli.main(["eval", "--query", str(tmp_path / "nope.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


def product_ids(index) -> set[str]:
    from vsearch.stores import open_store

    store = open_store(str(index))
    try:
        return {p.product_id for p in store.products()}
    finally:
        store.close()


def test_concurrent_index_adds_lose_nothing(tiny, tmp_path):
    """Four `vsearch index add` at once on one catalog, and a remove: every acknowledged change is there."""
    import os

    model = str(tiny["files"]["none"])  # LiteRT: no TensorFlow import, so the processes start fast
    index = tmp_path / "catalog.vsi"
    assert cli.main(["index", "build", str(tiny["data"] / "train"), "--model", model, "--store", str(index)]) == 0
    before = product_ids(index)
    gone = sorted(before)[0]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vsearch",
                "index",
                "add",
                str(photo),
                "--store",
                str(index),
                "--model",
                model,
                "--category",
                f"new{n}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n, photo in enumerate(tiny["photos"][:4])
    ]
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "vsearch", "index", "remove", gone, "--store", str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    )
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [o[1][-500:] for o in outs]
    assert all("1 product(s) with 1 photo(s)" in o[0] for o in outs[:4])
    after = product_ids(index)
    assert after - before == {f"new{n}/{photo.stem}" for n, photo in enumerate(tiny["photos"][:4])}
    assert before - after == {gone}


# ---------------------------------------------------------------- vsearch search --box


@pytest.fixture
def search_fake_catalog(fake_index, monkeypatch):
    """`vsearch search ... --store FAKE` answers with the fake model (its --model is not read)."""
    from fake_server import ColourEmbedder

    monkeypatch.setattr("vsearch.embedder.load_embedder", lambda *args, **kwargs: ColourEmbedder())
    return ["--store", str(fake_index), "--model", "fake"]


@pytest.fixture
def canvas_file(fake_searcher, tmp_path):
    """A red and a blue catalog photo side by side."""
    from fake_server import side_by_side
    from PIL import Image

    path = tmp_path / "canvas.png"
    Image.fromarray(side_by_side(fake_searcher, ["red/1", "blue/2"])).save(path)
    return str(path)


def test_search_box_searches_that_part(search_fake_catalog, canvas_file, capsys):
    import json

    assert cli.main(["search", canvas_file, "-k", "2", "--json", "--box", "0.5,0,1,1", *search_fake_catalog]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["box"] == [0.5, 0, 1, 1] and [m["category"] for m in out["matches"]] == ["blue", "blue"]
    assert out["matches"][0]["id"] == "blue/2"
    assert cli.main(["search", canvas_file, "-k", "2", "--box", "0,0,0.5,1", *search_fake_catalog]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the part of the photo in the box 0,0,0.5,1" and lines[1].startswith("category auto: ")
    assert "red/1" in lines[2]
    assert cli.main(["search", canvas_file, "-k", "1", "--json", *search_fake_catalog]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["box"] is None and whole["matches"][0]["id"] not in ("red/1", "blue/2")


@pytest.mark.parametrize(
    "box, fragment",
    [
        ("0,0,1.5,1", "not a box inside the photo"),
        ("--box=-0.1,0,0.5,1", "not a box inside the photo"),
        ("0.5,0,0.5,1", "not a box inside the photo"),
        ("0.6,0,0.5,1", "not a box inside the photo"),
        ("a,b,c,d", "four numbers"),
        ("0,0,1", "four finite numbers"),
    ],
)
def test_search_bad_box_exits_2_with_one_line_before_loading_the_model(
    canvas_file, fake_index, monkeypatch, capsys, box, fragment
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a bad --box")

    monkeypatch.setattr("vsearch.embedder.load_embedder", no_model)
    flag = [box] if box.startswith("--box=") else ["--box", box]
    assert cli.main(["search", canvas_file, *flag, "--store", str(fake_index), "--model", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vsearch search: error: --box: ") and fragment in err[0], err


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_search_bad_category_prior_exits_2_before_loading_the_model(
    canvas_file, fake_index, monkeypatch, capsys, value
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a bad --category-prior")

    monkeypatch.setattr("vsearch.embedder.load_embedder", no_model)
    assert (
        cli.main(["search", canvas_file, f"--category-prior={value}", "--store", str(fake_index), "--model", "fake"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--category-prior must be a number >= 0" in err[0], err


def test_search_category_prior_is_the_searchers(search_fake_catalog, canvas_file, monkeypatch, capsys):
    from vsearch.catalog.search import Searcher
    from vsearch.config import CATEGORY_PRIOR

    seen = []
    original = Searcher.__init__

    def watched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.category_prior)

    monkeypatch.setattr(Searcher, "__init__", watched)
    assert cli.main(["search", canvas_file, "-k", "1", *search_fake_catalog]) == 0
    assert cli.main(["search", canvas_file, "-k", "1", "--category-prior", "0.3", *search_fake_catalog]) == 0
    assert seen == [CATEGORY_PRIOR, 0.3]


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--batch-size", "-3"], ["--threads", "0"]])
def test_calibrate_bad_sizes_exit_2_with_one_line_before_loading_the_model(fake_index, monkeypatch, capsys, flag):
    def no_model(*args, **kwargs):
        raise AssertionError(f"the model was loaded for {flag}")

    monkeypatch.setattr("vsearch.embedder.load_embedder", no_model)
    assert cli.main(["calibrate", "--store", str(fake_index), "--model", "fake", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag[0]} must be >= 1, got {flag[1]}" in err[0], err


def test_search_settings_come_from_the_preset_and_set(search_fake_catalog, canvas_file, capsys):
    import json

    args = ["search", canvas_file, "--json", *search_fake_catalog]
    assert cli.main([*args, "--preset", "cosine", "--set", "k=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["matches"]) == 2 and not any("inliers" in m for m in out["matches"])  # no re-rank
    assert cli.main([*args, "--set", "k=2", "-k", "3", "--set", "category=any"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["matches"]) == 3 and out["category"]["mode"] == "any"
    assert cli.main([*args, "--set", "max_pixels=100"]) == 2  # the photo's limit, before the model
    assert "over the 100-pixel limit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-k", "0"], "-k must be >= 1, got 0"),
        (["--set", "k=0"], "k must be >= 1, got 0"),
        (["--set", "reranker.detector=akaze"], "reranker.detector must be one of orb, sift"),
        (["--set", "port=80"], "unknown config key 'port' for SearchConfig"),
    ],
)
def test_search_bad_settings_exit_2_before_loading_the_model(
    canvas_file, fake_index, monkeypatch, capsys, args, message
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for bad settings")

    monkeypatch.setattr("vsearch.embedder.load_embedder", no_model)
    assert cli.main(["search", canvas_file, *args, "--store", str(fake_index), "--model", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
