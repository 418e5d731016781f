"""Writing artifacts: one atomic writer for files and folders, JSON metadata, provenance.

Every file vsearch writes (indexes, feature caches, flatbuffers, normalised photos,
metadata) goes through :func:`write_atomic`: a temporary file beside the destination,
flushed and fsynced, given ordinary permissions (the umask's, not ``mkstemp``'s 0600,
so a server running as another user can read a model), then renamed over the
destination. A reader sees the old file or the new one, never half of one; a crash or
an error leaves the old one and no temporary behind. :func:`replace_dir` does the same
for a folder (the SavedModel).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from vsearch.errors import DataError

Writer = Callable[[Path], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Makes a rename inside ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str | Writer, mode: int | None = None) -> Path:
    """Replaces ``path`` atomically with ``data`` (bytes, text, or ``writer(tmp_path)``).

    Args:
        path: Destination file; its folder is created if missing.
        data: The content, or a function that writes the content into the temporary
            path it is given (for libraries that write to a path: Pillow, numpy).
        mode: Permission bits; default ``0o666`` less the umask, like ``open`` would give.
    Returns:
        The destination path.
    Raises:
        OSError: the file cannot be written; the destination is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            payload = data.encode() if isinstance(data, str) else bytes(data)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def printable(path: str | os.PathLike) -> str:
    """A path as text that can always be printed and stored as JSON (undecodable bytes as \\xNN)."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_json(path: str | os.PathLike, value, default: Callable | None = None) -> Path:
    """``value`` as indented JSON, written atomically."""
    return write_atomic(path, json.dumps(value, indent=2, default=default) + "\n")


def replace_dir(out: str | os.PathLike, fill: Writer) -> Path:
    """Builds a folder with ``fill(staging_dir)`` beside ``out``, then swaps it in.

    The old folder is moved aside first and removed after the new one is in place, so
    ``out`` is never a mix of the two; on an error the old folder stays.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        fill(staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_dir(out.parent)
    return out


def read_json_object(path: str | os.PathLike, remedy: str) -> dict:
    """A JSON object written by vsearch; unreadable, not JSON or not an object: DataError."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {remedy}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: not vsearch metadata (a JSON object); {remedy}")
    return value


def git_commit() -> str:
    """The checkout's short commit, or ``unknown``."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> str:
    """CPU model, core count and OS, for reports and benchmark results."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def provenance() -> dict:
    """Commit, UTC date and machine: what every report and benchmark result records."""
    return {
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }


def lock_path(path: str | os.PathLike) -> Path:
    """The advisory lock file beside ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def file_lock(
    path: str | os.PathLike, timeout: float = 600.0, log: Callable[[str], None] | None = None, shared: bool = False
):
    """Holds an exclusive advisory lock (``flock``) on ``<path>.lock`` while the block runs.

    Writers that read, change and rewrite one file (``vsearch index add/remove``) take it,
    so two of them never both start from the same version and lose each other's change.
    A second writer waits up to ``timeout`` seconds (saying so once through ``log``), then
    fails. The lock goes with the process: a killed writer never leaves it held.
    ``shared=True``: a reader's lock, held by many readers at once and never together
    with a writer's (a reader that opens several files sees them all of one version).

    Raises:
        DataError: still held by another writer after ``timeout`` seconds.
    """
    import fcntl

    where = lock_path(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DataError(
                        f"{path}: another writer still holds {where} after {timeout:g} s; "
                        "try again when it has finished"
                    ) from None
                if log and not told:
                    log(f"waiting for another writer of {path} to finish ...")
                    told = True
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# The metadata of an exported model, read by every runtime and by the learning wing alike.
METADATA_FILE = Path("assets.extra") / "vsearch.json"


def read_metadata(model_dir: str | os.PathLike) -> dict:
    """The ``assets.extra/vsearch.json`` of an exported model."""
    path = Path(model_dir) / METADATA_FILE
    if not (Path(model_dir) / "saved_model.pb").is_file():
        raise DataError(f"{model_dir}: not a SavedModel (no saved_model.pb); run `vsearch siamese` first")
    if not path.is_file():
        raise DataError(f"{path}: missing; this SavedModel was not exported by vsearch")
    return read_json_object(path, "export the model again")
