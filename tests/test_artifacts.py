"""The one atomic writer, the folder swap, JSON metadata and the writers' lock."""

import os
import stat
import threading
import time

import pytest

from vsearch import artifacts
from vsearch.errors import DataError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_bytes_text_and_writer(tmp_path):
    old = os.umask(0o022)
    try:
        artifacts.write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
        artifacts.write_atomic(tmp_path / "t.txt", "héllo")
        artifacts.write_atomic(tmp_path / "w.txt", lambda tmp: tmp.write_text("by a writer"))
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text() == "héllo" and (tmp_path / "w.txt").read_text() == "by a writer"
    for name in ("a/b.bin", "t.txt", "w.txt"):  # the umask's ordinary permissions, not mkstemp's 0600
        assert mode(tmp_path / name) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t.txt", "w.txt"]


@pytest.mark.parametrize("failure", ["writer", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, failure):
    target = tmp_path / "index.vsi"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    if failure == "replace":
        monkeypatch.setattr(os, "replace", boom)
        data = b"new"
    else:

        def data(tmp):
            tmp.write_bytes(b"half")
            boom()

    with pytest.raises(KeyboardInterrupt):
        artifacts.write_atomic(target, data)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["index.vsi"]


def test_replace_dir_swaps_whole_folders(tmp_path):
    out = tmp_path / "model"
    artifacts.replace_dir(out, lambda d: (d / "v1.txt").write_text("1"))
    artifacts.replace_dir(out, lambda d: (d / "v2.txt").write_text("2"))
    assert [p.name for p in out.iterdir()] == ["v2.txt"]

    def broken(d):
        (d / "partial").write_text("x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        artifacts.replace_dir(out, broken)
    assert [p.name for p in out.iterdir()] == ["v2.txt"]  # the previous folder stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=["022", "027", "002"])
def test_replace_dir_leaves_the_folder_as_mkdir_would(tmp_path, umask):
    # TF Serving runs as another user: mkdtemp's 0700 would hide the exported SavedModel from it.
    old = os.umask(umask)
    try:
        artifacts.replace_dir(tmp_path / "embedding", lambda d: (d / "saved_model.pb").write_bytes(b"x"))
        artifacts.replace_dir(tmp_path / "embedding", lambda d: (d / "saved_model.pb").write_bytes(b"y"))
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert mode(tmp_path / "embedding") & 0o777 == mode(tmp_path / "plain") & 0o777 == 0o777 & ~umask


def test_write_json_and_read_json_object(tmp_path):
    artifacts.write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert artifacts.read_json_object(tmp_path / "m.json", "redo") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(DataError, match="bad.json: not vsearch metadata"):
        artifacts.read_json_object(tmp_path / "bad.json", "redo")


def test_file_lock_serialises_writers_and_times_out(tmp_path):
    target = tmp_path / "catalog.vsi"
    order, said = [], []
    with artifacts.file_lock(target):

        def second():
            with artifacts.file_lock(target, timeout=10, log=said.append):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")  # the second writer is still waiting
        with pytest.raises(DataError, match="another writer still holds .*catalog.vsi.lock after 0.1 s"):
            with artifacts.file_lock(target, timeout=0.1):
                pass
    thread.join(5)
    assert order == ["first", "second"] and len(said) == 1 and "waiting for another writer" in said[0]


def test_provenance_names_commit_date_and_machine():
    info = artifacts.provenance()
    assert set(info) == {"commit", "date", "machine"} and "cores" in info["machine"]
