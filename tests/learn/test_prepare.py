import json
import os
import zipfile

import numpy as np
import pytest
from conftest import awkward_files

from vsearch import cli
from vsearch.config import CLASS_NAMES
from vsearch.errors import DataError
from vsearch.learn import prepare as data
from vsearch.learn.photo_checks import scan_split


def test_prepare_from_local_copy_is_idempotent(image_root, tmp_path):
    awkward_files(image_root / "train" / "blue")
    dest = tmp_path / "out"
    checks = tmp_path / "checks.json"
    result = data.prepare(image_root, dest, class_names=("blue", "green", "red"), checks=checks)
    assert result["splits"]["train"]["counts"]["blue"] == 6 + 5
    assert len(json.loads(checks.read_text())["verdicts"]) == sum(
        sum(split["counts"].values()) for split in result["splits"].values()
    )  # what the stages reuse
    assert len(result["splits"]["train"]["excluded"]) == 4
    files = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    again = data.prepare(image_root, dest, class_names=("blue", "green", "red"))
    assert again == result
    assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == files
    # the clean copy has nothing left to normalise or exclude
    clean = scan_split(dest / "train")
    assert not clean.bad and not clean.convert
    assert json.loads((dest / "report.json").read_text()) == result
    assert "EXCLUDED (train)" in data.format_report(result)


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("dest", [".", "train", ".."])
def test_prepare_refuses_a_destination_overlapping_the_source(image_root, dest):
    awkward_files(image_root / "train" / "blue")  # files a mirror would leave out or normalise
    before = _tree(image_root.parent)
    with pytest.raises(DataError, match="overlaps --source"):
        data.prepare(image_root, image_root / dest, class_names=("blue", "green", "red"))
    assert _tree(image_root.parent) == before  # nothing deleted, nothing written


def test_prepare_refuses_a_folder_of_photos_it_did_not_write(image_root, tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "train" / "blue").mkdir(parents=True)
    (theirs / "train" / "blue" / "keep.jpg").write_bytes(b"someone's photo")
    with pytest.raises(DataError, match="not written by `vsearch data`"):
        data.prepare(image_root, theirs, class_names=("blue", "green", "red"))
    assert (theirs / "train" / "blue" / "keep.jpg").read_bytes() == b"someone's photo"
    empty = tmp_path / "empty"
    (empty / "train" / "blue").mkdir(parents=True)  # empty class folders are fine
    data.prepare(image_root, empty, class_names=("blue", "green", "red"))
    assert (empty / "report.json").is_file()


def test_interrupted_writes_leave_nothing_behind(image_root, tmp_path, monkeypatch):
    awkward_files(image_root / "train" / "blue")
    dest = tmp_path / "out"
    from PIL import Image

    def crash(self, fp, *args, **kwargs):  # the disk fills up, or Ctrl-C, half-way through a PNG
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(image_root, dest, class_names=("blue", "green", "red"))
    folder = dest / "train" / "blue"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file
    assert all(p.read_bytes() != b"\x89PNG half" for p in folder.iterdir())  # nor a half-written one
    monkeypatch.undo()
    result = data.prepare(image_root, dest, class_names=("blue", "green", "red"))  # the re-run completes
    assert not scan_split(dest / "train").bad and result["splits"]["train"]["converted"]
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in folder.glob("*.jpg.png")} == {0o666 & ~mask}  # not mkstemp's 0600


def test_prepare_downloads_an_archive(image_root, tmp_path):
    archive = tmp_path / "upstream.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in image_root.rglob("*"):
            if path.is_file():
                zf.write(path, "clothing-dataset-small-master/" + str(path.relative_to(image_root)))
    result = data.prepare(None, tmp_path / "out", class_names=("blue", "red"), url=archive.as_uri())
    assert result["splits"]["validation"]["counts"] == {"blue": 3, "red": 3}
    assert (tmp_path / "out" / "train" / "red").is_dir()
    assert not (tmp_path / "out" / "train" / "green").exists()


def test_download_failure_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--source DIR"):
        data.download((tmp_path / "missing.zip").as_uri())


def test_an_archive_without_the_splits_leaves_no_temporary_folder(tmp_path, monkeypatch):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("something/else.txt", "not a dataset")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(data.tempfile, "tempdir", str(scratch))
    with pytest.raises(DataError, match="no train/ and validation/"):
        data.download(archive.as_uri())
    assert list(scratch.iterdir()) == []


def _replace_with_older(path, data: bytes) -> None:
    """Replaces ``path`` by a new file with ``data`` and a modification time years older, as a
    backup restore, ``cp -p`` or ``rsync -a`` would (rsync: a new file renamed over the old)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.utime(tmp, (1e9, 1e9))
    os.replace(tmp, path)


@pytest.mark.parametrize("link", [True, False])
def test_a_replaced_photo_is_copied_again_whatever_its_modification_time(image_root, tmp_path, monkeypatch, link):
    from conftest import jpeg_bytes
    from PIL import Image

    from vsearch.images import decode_image

    def cross_device(*args):
        raise OSError("Invalid cross-device link")

    if not link:  # another file system: copies instead of hard links
        monkeypatch.setattr(os, "link", cross_device)
    awkward = awkward_files(image_root / "train" / "blue")
    dest = tmp_path / "out"
    data.prepare(image_root, dest, class_names=("blue", "green", "red"))
    photo = image_root / "train" / "blue" / "blue_0.jpg"
    new_photo = (image_root / "train" / "green" / "green_1.jpg").read_bytes()
    _replace_with_older(photo, new_photo)
    exif = Image.Exif()
    exif[0x0112] = 6
    new_rotated = jpeg_bytes(Image.new("RGB", (30, 20), (10, 200, 30)), exif=exif)
    _replace_with_older(awkward["exif"], new_rotated)

    data.prepare(image_root, dest, class_names=("blue", "green", "red"))
    assert (dest / "train" / "blue" / "blue_0.jpg").read_bytes() == new_photo
    normalised = dest / "train" / "blue" / "exif_rotated.jpg.png"
    assert np.array_equal(np.asarray(Image.open(normalised).convert("RGB")), decode_image(new_rotated))


def test_a_destination_that_is_a_file_is_a_clear_error(image_root, tmp_path, capsys):
    from vsearch import cli

    file = tmp_path / "catalog.zip"
    file.write_bytes(b"not a folder")
    for dest in (file, file / "clothing"):
        with pytest.raises(DataError, match=f"--dest {dest}: {file} is a file, not a folder"):
            data.prepare(image_root, dest, class_names=("blue", "green", "red"))
    assert (
        cli.main(
            [
                "data",
                "--source",
                str(image_root),
                "--dest",
                str(file),
                "--classes",
                "blue,green,red",
                "--feature-cache-dir",
                "",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert file.read_bytes() == b"not a folder"


def test_a_shops_own_folder_brings_its_own_categories(image_root, tmp_path, capsys):
    """No --classes: every category folder of the source's train/ is kept, whatever the shop sells."""
    shop = tmp_path / "shop"
    for split in ("train", "validation"):
        for old, new in (("blue", "outwear"), ("green", "shirt"), ("red", "skirt")):
            (shop / split).mkdir(parents=True, exist_ok=True)
            (shop / split / new).symlink_to(image_root / split / old, target_is_directory=True)
    assert cli.main(["data", "--source", str(shop), "--dest", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["splits"]["train"]["counts"]) == ["outwear", "shirt", "skirt"]
    assert sorted(p.name for p in (tmp_path / "out" / "validation").iterdir() if p.is_dir()) == [
        "outwear",
        "shirt",
        "skirt",
    ]
    assert data.source_classes(None, None) == CLASS_NAMES  # the download keeps the clothing seven
    (shop / "train" / "shirt").unlink()
    (shop / "train" / "skirt").unlink()
    assert cli.main(["data", "--source", str(shop), "--dest", str(tmp_path / "other")]) == 2
    assert "need at least 2" in capsys.readouterr().err
