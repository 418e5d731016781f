import json
import shutil

import pytest
from conftest import awkward_files, make_image_folder

from vsearch.errors import DataError
from vsearch.learn import photo_checks as checks


def test_scan_split_counts_and_classifies(image_root):
    awkward = awkward_files(image_root / "train" / "red")
    report = checks.scan_split(image_root / "train")
    assert report.class_names == ["blue", "green", "red"]
    counts = report.counts()
    assert counts["blue"] == 6 and counts["green"] == 6
    assert counts["red"] == 6 + 5  # gray, rgba, 16-bit, cmyk, exif are usable
    assert set(report.bad) == {str(awkward[k]) for k in ("corrupt", "truncated", "empty", "text")}
    converted = {k for k, v in awkward.items() if str(v) in report.convert}
    assert converted == {"rgba", "sixteen", "cmyk", "exif"}
    assert str(awkward["gray"]) in report.files["red"]  # TF reads 8-bit grayscale as is


def test_remembered_checks_give_the_same_report_without_decoding(image_root, tmp_path, monkeypatch):
    awkward = awkward_files(image_root / "train" / "red")
    memo = tmp_path / "cache" / "image-checks.json"
    first = checks.scan_split(image_root / "train", checks=memo)
    assert first == checks.scan_split(image_root / "train")
    stored = json.loads(memo.read_text())["verdicts"]
    assert len(stored) == first.total  # ok and convert verdicts; bad files are checked every time

    decoded = []
    real = checks._inspect
    monkeypatch.setattr(checks, "_inspect", lambda *a: decoded.append(a[1].name) or real(*a))
    assert checks.scan_split(image_root / "train", checks=memo) == first
    bad = sorted(awkward[k].name for k in ("corrupt", "truncated", "text"))  # (empty: reading it fails)
    assert sorted(decoded) == bad
    # Keyed by bytes: a copy elsewhere is known, an edited file is checked again.
    copy = tmp_path / "copy"
    shutil.copytree(image_root / "train", copy)
    decoded.clear()
    assert checks.scan_split(copy, checks=memo).counts() == first.counts()
    assert sorted(decoded) == bad
    photo = sorted((copy / "blue").iterdir())[0]
    photo.write_bytes(photo.read_bytes()[:300])  # now truncated
    decoded.clear()
    report = checks.scan_split(copy, checks=memo)
    assert str(photo) in report.bad and photo.name in decoded
    # A damaged or older-version file of checks is ignored, never trusted.
    memo.write_text("{not json")
    assert checks.scan_split(image_root / "train", checks=memo) == first
    memo.write_text(json.dumps({"version": checks.CHECKS_VERSION - 1, "verdicts": {k: ["ok", ""] for k in stored}}))
    decoded.clear()
    assert checks.scan_split(image_root / "train", checks=memo) == first and len(decoded) > first.total


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        checks.scan_split(tmp_path / "nope")


def test_one_class_is_not_enough(tmp_path):
    make_image_folder(tmp_path)
    for name in ("green", "red"):
        shutil.rmtree(tmp_path / "train" / name)
    with pytest.raises(DataError, match="need at least 2"):
        checks.scan_split(tmp_path / "train")


def test_empty_class_is_named(image_root):
    for f in (image_root / "train" / "green").iterdir():
        f.unlink()
    (image_root / "train" / "green" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"no usable image in class folder\(s\) \['green'\]"):
        checks.scan_split(image_root / "train")


def test_expected_class_missing(image_root):
    with pytest.raises(DataError, match="class folder missing"):
        checks.scan_split(image_root / "validation", ["blue", "green", "red", "purple"])


def test_materialise_writes_again_only_files_whose_source_changed(image_root, tmp_path, monkeypatch):
    awkward_files(image_root / "train" / "red")
    mirror = checks.materialise(checks.scan_split(image_root / "train"), tmp_path / "mirror", link=False)
    assert sorted(p.name for p in (mirror / "red").iterdir()) == sorted(
        ["cmyk.jpg.png", "exif_rotated.jpg.png", "gray.png", "rgba.png", "sixteen.png"]
        + [f"red_{i}.{'png' if i % 3 == 2 else 'jpg'}" for i in range(6)]
    )
    written = []
    for name in ("_write_copy", "_write_normalised"):
        real = getattr(checks, name)
        monkeypatch.setattr(
            checks, name, lambda src, dest, *a, real=real: written.append(dest.name) or real(src, dest, *a)
        )
    checks.materialise(checks.scan_split(image_root / "train"), mirror, link=False)
    assert written == []  # nothing changed, nothing written
    (image_root / "train" / "blue" / "blue_0.jpg").write_bytes(
        (image_root / "train" / "blue" / "blue_1.jpg").read_bytes()
    )
    (mirror / "red" / "gray.png").unlink()
    checks.materialise(checks.scan_split(image_root / "train"), mirror, link=False)
    assert sorted(written) == ["blue_0.jpg", "gray.png"]
    assert (mirror / "blue" / "blue_0.jpg").read_bytes() == (image_root / "train" / "blue" / "blue_1.jpg").read_bytes()


def test_a_file_name_that_is_not_utf8_is_excluded_and_listed(image_root, tmp_path):
    """tf.data cannot name such a file: it crashed `vsearch train`; now it is left out, by name."""
    import os

    train = image_root / "train"
    cls = sorted(p for p in train.iterdir() if p.is_dir())[0]
    good = sorted(cls.iterdir())[0]
    raw = os.path.join(os.fsencode(cls), b"caf\xe9.jpg")
    with open(raw, "wb") as fh:
        fh.write(good.read_bytes())
    report = checks.scan_split(train)
    [(path, why)] = report.bad.items()
    assert path.endswith("caf\\xe9.jpg") and "not valid UTF-8" in why
    assert all(os.fsdecode(raw) not in files for files in report.files.values())
    json.dumps(report.to_dict()).encode("utf-8")  # the report can be written and printed
    clean, _ = checks.clean_split(train, tmp_path / "clean")
    assert not any(b"\xe9" in os.fsencode(p) for p in clean.rglob("*"))
