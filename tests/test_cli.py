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
    assert cli.main(["data", "--source", str(image_root), "--dest", str(image_root), "--classes", "blue,green,red",
                     "--feature-cache-dir", ""]) == 2
    assert "overlaps --source" in capsys.readouterr().err
    assert sorted(p for p in image_root.rglob("*")) == before


def test_missing_data_folder_exits_2(tmp_path, capsys):
    assert cli.main(["data", "--source", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_data_command_copies_and_reports(image_root, tmp_path, capsys):
    assert cli.main(["data", "--source", str(image_root), "--dest", str(tmp_path / "out"),
                     "--classes", "blue,green,red", "--feature-cache-dir", str(tmp_path / "cache")]) == 0
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


def test_concurrent_index_adds_lose_nothing(tiny, tmp_path):
    """Four `vsearch index add` at once on one index: every photo reported added is there."""
    import os

    from vsearch.index import Catalog

    model = str(tiny["files"]["none"])  # LiteRT: no TensorFlow import, so the processes start fast
    index = tmp_path / "catalog.vsi"
    assert cli.main(["index", "build", str(tiny["data"] / "train"), "--model", model, "--out", str(index)]) == 0
    before = set(Catalog.load(index).items)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "vsearch", "index", "add", str(index), str(photo),
                               "--model", model, "--category", f"new{n}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for n, photo in enumerate(tiny["photos"][:4])]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-500:] for o in outs]
    assert all("added 1 item(s)" in o[0] for o in outs)
    after = set(Catalog.load(index).items)
    assert after - before == {f"new{n}/{photo.stem}" for n, photo in enumerate(tiny["photos"][:4])}


def test_a_writer_that_cannot_get_the_lock_fails_clearly(tiny, tmp_path, capsys):
    from vsearch.artifacts import file_lock
    from vsearch.index import Catalog

    index = tmp_path / "catalog.vsi"
    assert cli.main(["index", "build", str(tiny["data"] / "train"), "--model", str(tiny["files"]["none"]),
                     "--out", str(index)]) == 0
    some_id = next(iter(Catalog.load(index).items))
    capsys.readouterr()
    with file_lock(index):
        assert cli.main(["index", "remove", str(index), some_id, "--wait", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "another writer still holds" in err and err.count("error:") == 1
    assert some_id in Catalog.load(index)  # nothing changed
    assert cli.main(["index", "remove", str(index), some_id]) == 0 and some_id not in Catalog.load(index)


# ---------------------------------------------------------------- vsearch search --box

@pytest.fixture
def search_fake_catalog(fake_index, monkeypatch):
    """`vsearch search ... --index FAKE` answers with the fake model (its --model is not read)."""
    from fake_server import load_searcher
    from vsearch.search import Searcher

    monkeypatch.setattr(Searcher, "from_paths", classmethod(lambda cls, model, index, **kw: load_searcher(index)))
    return ["--index", str(fake_index), "--model", "fake"]


@pytest.fixture
def canvas_file(fake_searcher, tmp_path):
    """A red and a blue catalog photo side by side."""
    from PIL import Image

    from fake_server import side_by_side

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
    assert lines[0] == "the part of the photo in the box 0,0,0.5,1" and "red/1" in lines[1]
    assert cli.main(["search", canvas_file, "-k", "1", "--json", *search_fake_catalog]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["box"] is None and whole["matches"][0]["id"] not in ("red/1", "blue/2")


@pytest.mark.parametrize("box, fragment", [
    ("0,0,1.5,1", "not a box inside the photo"), ("--box=-0.1,0,0.5,1", "not a box inside the photo"),
    ("0.5,0,0.5,1", "not a box inside the photo"), ("0.6,0,0.5,1", "not a box inside the photo"),
    ("a,b,c,d", "four numbers"), ("0,0,1", "four finite numbers"),
])
def test_search_bad_box_exits_2_with_one_line_before_loading_the_model(canvas_file, fake_index, monkeypatch,
                                                                      capsys, box, fragment):
    from vsearch.search import Searcher

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a bad --box")

    monkeypatch.setattr(Searcher, "from_paths", no_model)
    flag = [box] if box.startswith("--box=") else ["--box", box]
    assert cli.main(["search", canvas_file, *flag, "--index", str(fake_index), "--model", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vsearch search: error: --box: ") and fragment in err[0], err
