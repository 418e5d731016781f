"""The embedded store's files: a snapshot plus an append-only log, read, followed, appended to, compacted.

A :class:`Journal` belongs to one :class:`vsearch.stores.faiss.FaissStore`, as qdrant-client's
local collection owns its persistence: the store holds the catalog in memory and says what
one record does to it (``_change``: every check, then a change that cannot fail), what it is
as a snapshot (``_compact_state``) and how to read one (``_load``); the journal holds the
files, where the store's state stands in them, and every step that reads or writes them.

**The files.** ``PATH`` is an ``.npz`` snapshot (format ``vsearch-catalog/3``: a small JSON
``meta``, the rows and products as JSON, the vectors or the serialized HNSW graph), written
atomically. ``PATH.log`` starts with a header record naming the snapshot ``generation`` it
extends, then one record per upsert, delete or calibration, each ``magic | length | crc32 |
body``, appended and fsynced under the exclusive writers' lock
(:func:`vsearch.artifacts.file_lock`; a writer another process keeps waiting past
``WRITE_WAIT_S`` gets a :class:`~vsearch.errors.StoreError`, the API's 503, and writes
nothing). Readers open the snapshot and the log together under the shared lock.

**Damage.** A record cut short by a crash fails its length or checksum with nothing intact
after it (a *torn tail*): readers stop before it, the next writer cuts it off. A damaged
record with intact records after it is not a crash's: reading it is a
:class:`~vsearch.errors.DataError` naming the log and the record, and no writer cuts
anything (a reader without the lock reads again under the shared lock before it says so:
a writer cutting a torn tail meanwhile is no damage). So is an intact record that cannot be applied (written by hand, or by a version
without today's checks): a writer checks each record as readers will decode it before
appending it, so none of its own can fail once fsynced. A snapshot's arrays are checked
against their headers before anything is read (a damaged header, a size that does not fit,
non-finite vectors: a DataError naming the file).

**Compaction** (crash-safe at every step): (1) serialize the state that has applied the log
up to offset X, without the file lock; write it to ``PATH.compacting`` as generation G+1
with ``base = (G, X)``; (2) under the lock, write ``PATH.log.compacting`` = header(G+1) +
the log's records after X (others' writes meanwhile); (3) rename the snapshot in (the
commit point), (4) rename the log in. A crash before (3) leaves G and its log; between (3)
and (4), the new snapshot's ``base`` says to replay the old log from X (and the next writer
finishes step 4). A ``build`` writes a snapshot with no base: a log of another generation
is stale and ignored.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import struct
import threading
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vsearch.artifacts import _fsync_dir, file_lock, write_atomic
from vsearch.errors import DataError, StoreError
from vsearch.stores.validate import TYPES, describe

FORMAT = "vsearch-catalog/3"
LOG_FORMAT = "vsearch-log/1"
MAGIC = b"VSR1"
HEAD = struct.Struct("<4sQI")  # magic, body length, crc32 of the body
REMEDY = "rebuild it with `vsearch index build`"
WRITE_WAIT_S = 600.0  # how long a writer waits for another process' write (a bulk `index add`)
# What reading a damaged or hand-made file may raise, from zipfile, numpy's header parser
# (ast, tokenize), json, FAISS and the checks here: all of them mean a file that cannot be used.
DAMAGE = (
    OSError,
    ValueError,
    LookupError,
    RuntimeError,
    TypeError,
    AttributeError,
    ArithmeticError,
    RecursionError,
    MemoryError,
    SyntaxError,
    EOFError,
    struct.error,
    tokenize.TokenError,
    zipfile.BadZipFile,
)


def reason(exc: BaseException) -> str:
    """An exception as one short line (a numpy header error quotes the whole padded header)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


# ---------------------------------------------------------------- log records


def encode_record(meta: dict, vectors: np.ndarray | None = None) -> bytes:
    """One self-checking log record: magic, body length, crc32, then JSON and float32 vectors."""
    text = json.dumps(meta).encode()
    body = struct.pack("<I", len(text)) + text
    if vectors is not None:
        body += np.ascontiguousarray(vectors, "<f4").tobytes()
    return HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode_record(data: bytes, at: int = 0) -> tuple[Any, bytes, int] | None:
    """The whole, intact record at ``data[at:]`` as (meta, vector bytes, end offset); None if there is none."""
    if at + HEAD.size + 4 > len(data):
        return None
    magic, length, crc = HEAD.unpack_from(data, at)
    start, end = at + HEAD.size, at + HEAD.size + length
    if magic != MAGIC or length < 4 or end > len(data):
        return None
    (size,) = struct.unpack_from("<I", data, start)
    if size > length - 4:
        return None
    body = data[start:end]
    if zlib.crc32(body) != crc:
        return None
    try:
        meta = json.loads(body[4 : 4 + size])
    except (ValueError, RecursionError):
        return None
    return meta, body[4 + size :], end


def next_intact(data: bytes, at: int) -> int | None:
    """Where the first intact record at or after ``at`` starts, or None."""
    while (at := data.find(MAGIC, at)) >= 0:
        if decode_record(data, at) is not None:
            return at
        at += 1
    return None


class LogDamage(ValueError):
    """A damaged record with an intact record after it: not a crash's torn tail."""

    def __init__(self, offset: int, index: int, following: int):
        super().__init__(f"record {index} at byte {offset} is damaged; an intact record follows at byte {following}")
        self.offset, self.index, self.following = offset, index, following


def decode_records(data: bytes, start: int = 0) -> tuple[list[tuple[Any, bytes, int]], int]:
    """The records in ``data[start:]`` as (meta, vector bytes, end offset), and where the last one ends.

    A torn tail (the last record incomplete or damaged with nothing intact after it: a
    writer that crashed mid-append, or one still appending) is left out.

    Raises:
        LogDamage: a damaged record with an intact one after it (offsets in ``data``, the
            record's index counted from ``start``).
    """
    out: list[tuple[Any, bytes, int]] = []
    at = start
    while at < len(data):
        record = decode_record(data, at)
        if record is None:
            following = next_intact(data, at + 1)
            if following is not None:
                raise LogDamage(at, len(out), following)
            break
        out.append(record)
        at = record[2]
    return out, at


def header(generation: str) -> bytes:
    return encode_record({"op": "begin", "format": LOG_FORMAT, "generation": generation})


def read_log_header(path: Path, handle) -> tuple[str, int]:
    """(generation, where the records start) of an open log."""
    handle.seek(0)
    record = decode_record(handle.read(1 << 16))
    head = record[0] if record else {}
    if (
        record is None
        or not isinstance(head, dict)
        or head.get("op") != "begin"
        or head.get("format") != LOG_FORMAT
        or not isinstance(head.get("generation"), str)
    ):
        raise DataError(
            f"{path}: not a vsearch catalog log (its header is damaged); remove it to drop the "
            f"changes since the last snapshot, or {REMEDY}"
        )
    return head["generation"], record[2]


# ---------------------------------------------------------------- the snapshot


def write_snapshot(path: Path, meta: dict, arrays: dict) -> None:
    payload = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def write(tmp: Path) -> None:
        with builtins.open(tmp, "wb") as fh:  # a handle: np.savez would add ".npz" to a path
            np.savez(fh, meta=payload, **arrays)

    try:
        write_atomic(path, write)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the catalog ({exc.strerror or exc})") from None


def member_header(member, name: str, dtype, ndim: int, size: int) -> tuple[int, ...]:
    """The shape an open ``.npy`` member of ``size`` bytes holds, checked against what the store
    writes there (``dtype``, ``ndim`` dimensions, the bytes that follow) before anything is read.

    Raises:
        ValueError (or what numpy's header parser raises): a damaged or foreign header.
    """
    with warnings.catch_warnings():  # numpy warns about headers it can only read the old way
        warnings.simplefilter("ignore")
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, found = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, found = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"{name}: an array of format version {version}")
    if found != np.dtype(dtype) or len(shape) != ndim or fortran or any(n < 0 for n in shape):
        raise ValueError(f"{name}: a {found} array of shape {shape}, expected {ndim} dimension(s) of {np.dtype(dtype)}")
    left = size - member.tell()
    if math.prod(shape) * np.dtype(dtype).itemsize != left:
        raise ValueError(f"{name}: the header says shape {shape}, the file holds {left} bytes")
    return tuple(shape)


def read_member(archive: zipfile.ZipFile, name: str, dtype, ndim: int) -> np.ndarray:
    """One array of a snapshot (its header checked first, its CRC when read to the end)."""
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as member:
        shape = member_header(member, name, dtype, ndim, info.file_size)
        data = member.read(math.prod(shape) * np.dtype(dtype).itemsize)
        member.read()  # at the end: zipfile checks the CRC
    return np.frombuffer(data, dtype).reshape(shape)


def read_index(archive: zipfile.ZipFile):
    """The HNSW graph a snapshot holds (its ``faiss`` member), streamed from the file into FAISS.

    Reading the member into numpy and then deserializing it held three copies of the graph
    and its vectors at once (1.9 GB each at 1M 391-d photos); streaming holds one.
    """
    import faiss

    info = archive.getinfo("faiss.npy")
    with archive.open(info) as member:
        member_header(member, "faiss", np.uint8, 1, info.file_size)
        return faiss.read_index(faiss.PyCallbackIOReader(member.read))  # type: ignore[attr-defined]


# The snapshot header's fields: (type, required); a file without them is not a catalog.
_META = {
    "fingerprint": (str, True),
    "dim": (int, True),
    "index": (dict, True),
    "schema": (dict, True),
    "generation": (str, True),
    "model": (dict, False),
    "stats": (dict, False),
    "calibration": (dict, False),
    "base": (dict, False),
}


# The index's parameters, each a whole number in a range (FaissIndex.params() writes them).
_INDEX = {"hnsw_m": (2, 512), "ef_construction": (1, 1 << 16), "ef_search": (1, 1 << 16)}


def meta_problem(meta: dict) -> str:
    """What is wrong with a snapshot's header, or "" when nothing is."""
    for key, (kind, required) in _META.items():
        value = meta.get(key)
        if value is None:
            if required:
                return f"no {key!r} in the header"
        elif not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is a {type(value).__name__}, expected a {kind.__name__}"
    if meta["dim"] < 1:
        return f"dimension {meta['dim']}"
    if any(kind not in TYPES for kind in meta["schema"].values()):
        return "an attribute type that is not bool, int, float or text"
    index = meta["index"]
    if index.get("kind") not in ("exact", "hnsw") or set(index) - {"kind", *_INDEX}:
        return f"an index of kind {describe(index.get('kind'))} or unknown parameters"
    for key, (low, high) in _INDEX.items():  # FAISS takes an HNSW degree of -1 by crashing the process
        value = index.get(key, low)
        if type(value) is not int or not low <= value <= high:
            return f"index parameter {key!r} is {describe(value)}, not a whole number from {low} to {high}"
    base = meta.get("base")
    if base is not None and (
        not isinstance(base.get("generation"), str)
        or not isinstance(base.get("offset"), int)
        or isinstance(base.get("offset"), bool)
        or base["offset"] < 0
    ):
        return "a damaged 'base'"
    return ""


def read_meta(path: Path, handle) -> tuple[dict, zipfile.ZipFile]:
    """A snapshot's header, checked, and the archive to read its arrays from."""
    try:
        archive = zipfile.ZipFile(handle)
        meta = json.loads(read_member(archive, "meta", np.uint8, 1).tobytes().decode())
    except DAMAGE as exc:
        raise DataError(f"{path}: not a vsearch catalog index ({reason(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: not a vsearch catalog index (format {found!r}, expected {FORMAT!r}); {REMEDY}")
    problem = meta_problem(meta)
    if problem:
        raise DataError(f"{path}: not a vsearch catalog index ({problem}); {REMEDY}")
    return meta, archive


@contextmanager
def reading_snapshot(path: Path):
    """Whatever reading the snapshot's arrays raises, as a DataError naming the file."""
    try:
        yield
    except DataError:
        raise
    except DAMAGE as exc:
        raise DataError(f"{path}: damaged catalog index ({reason(exc)}); {REMEDY}") from None


def stat(handle) -> tuple:
    st = os.fstat(handle.fileno())
    return st.st_ino, st.st_size, st.st_mtime_ns


def stat_path(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------- the journal


class Owner(Protocol):
    """What a journal needs of the store that owns it."""

    path: Path
    dim: int
    fingerprint: str
    _journal: Journal

    def _change(self, meta: Any, vectors: np.ndarray | None, strict: bool = False) -> Callable[[], None]: ...

    def _load(
        self, path: Path, snapshot, log, expected_fingerprint: str | None = None, locked: bool = False
    ) -> Any: ...

    def _take(self, other: Any) -> None: ...

    def _compact_state(self) -> tuple[dict, dict]: ...


class Journal:
    """The files of one store and where its state stands in them (see the module doc)."""

    def __init__(self, owner: Owner, path: Path):
        self.owner = owner
        self.path = path
        self.log_path = path.with_name(path.name + ".log")
        self.sync = threading.RLock()  # one thread at a time reads the log or writes it
        self.generation = ""  # the snapshot's generation, and (G, X) when it compacted log G at X
        self.base: dict | None = None
        self.snapshot_stat: tuple = ()  # (inode, size, mtime) of the snapshot read
        self.log: Any = None  # the log being read (an open binary file), its generation, how far
        self.log_gen = ""
        self.offset = 0
        self.stale_log = -1  # inode of a log left by an earlier build (ignored)

    _STATE = ("generation", "base", "snapshot_stat", "log", "log_gen", "offset", "stale_log")

    def take(self, other: Journal) -> None:
        """Where ``other`` (a full reload's journal) stands, for this one."""
        for name in self._STATE:
            setattr(self, name, getattr(other, name))

    # ------------------------------------------------------------ opening

    def open_files(self, locked: bool):
        """(snapshot, log or None) handles of one version: opened under the shared lock."""
        with nullcontext() if locked else file_lock(self.path, shared=True):
            if not self.path.is_file():
                raise DataError(f"{self.path}: no such catalog index; build one with `vsearch index build`")
            snapshot = builtins.open(self.path, "rb")
            try:
                log = builtins.open(self.log_path, "rb")
            except FileNotFoundError:
                log = None
        return snapshot, log

    def adopt(self, log, locked: bool) -> None:
        """Takes the log that goes with the snapshot just read: from its header, or (a compaction
        that did not get to replace the log) the old log from the snapshot's base offset."""
        self.log = None
        if log is None:
            return
        generation, start = read_log_header(self.log_path, log)
        if generation != self.generation and not (self.base and generation == self.base.get("generation")):
            self.stale_log = os.fstat(log.fileno()).st_ino  # a log of an earlier build: ignored, then replaced
            log.close()
            return
        self.log, self.log_gen = log, generation
        self.offset = start if generation == self.generation else int((self.base or {})["offset"])
        self.read_log(locked)

    # ------------------------------------------------------------ reading the log

    def read_log(self, locked: bool, until: int | None = None) -> bool:
        """Applies the log's whole records from this state's offset (to ``until``); True if any.
        ``locked``: this process holds the writers' lock; then a torn tail is a crashed
        writer's and is cut off (never anything before it, never when ``until`` is given)."""
        if self.log is None:
            return False
        data = self._log_bytes(until)
        try:
            records, end = decode_records(data)
        except LogDamage:
            if locked:
                raise self._damaged(data) from None
            with file_lock(self.path, shared=True):  # read again with writers held off: not a write in progress
                data = self._log_bytes(until)
                try:
                    records, end = decode_records(data)
                except LogDamage:
                    raise self._damaged(data) from None
        start = self.offset
        for meta, blob, stop in records:
            try:
                vectors = np.frombuffer(blob, "<f4").reshape(-1, self.owner.dim) if blob else None
                change = self.owner._change(meta, vectors)
            except DAMAGE as exc:
                raise self._unappliable(exc) from None
            change()
            self.offset = start + stop
        if locked and until is None and end < len(data):
            os.truncate(self.log_path, self.offset)
        return bool(records)

    def _log_bytes(self, until: int | None) -> bytes:
        self.log.seek(self.offset)
        return self.log.read() if until is None else self.log.read(max(until - self.offset, 0))

    def _record_number(self, offset: int) -> int:
        """The number of the record at ``offset`` of the log read (1: the first after the header)."""
        self.log.seek(0)
        records, _ = decode_records(self.log.read(offset))
        return len(records)

    def _damaged(self, data: bytes) -> DataError:
        """A damaged record with intact ones after it, as the error that names it."""
        try:
            decode_records(data)
        except LogDamage as damage:
            at, following = self.offset + damage.offset, self.offset + damage.following
        number = self._record_number(at)
        return DataError(
            f"{self.log_path}: record {number} (byte {at}) is damaged and intact records follow it (the next at "
            f"byte {following}): not a crash's torn tail, so nothing was read past it and nothing was cut. "
            f"Restore the file from a backup, or cut it there (truncate -s {at} {self.log_path}) to drop that "
            f"record and every change after it, or {REMEDY}"
        )

    def _unappliable(self, exc: BaseException) -> DataError:
        number = self._record_number(self.offset)
        return DataError(
            f"{self.log_path}: record {number} (byte {self.offset}) cannot be applied ({reason(exc)}); nothing was "
            f"read past it. Cut the log there (truncate -s {self.offset} {self.log_path}) to drop that record "
            f"and every change after it, or {REMEDY}"
        )

    # ------------------------------------------------------------ following other writers

    def catch_up(self, locked: bool) -> bool:
        """Takes in what other processes wrote since this state last read; True if anything did."""
        if stat_path(self.path) != self.snapshot_stat:
            return self.follow(locked)
        log = stat_path(self.log_path)
        if self.log is None:
            return bool(log) and log[0] != self.stale_log and self.follow(locked)
        if not log or log[0] != os.fstat(self.log.fileno()).st_ino:
            return self.follow(locked)
        return log[1] != self.offset and self.read_log(locked)

    def reload(self, snapshot, log, locked: bool) -> bool:
        """Everything read again from these files (the owner becomes what they hold)."""
        self.owner._take(self.owner._load(self.path, snapshot, log, locked=locked))
        return True

    def follow(self, locked: bool) -> bool:
        """The snapshot or the log was replaced: follow a compaction of this state, else reload."""
        snapshot, log = self.open_files(locked)
        if stat(snapshot) == self.snapshot_stat:
            snapshot.close()
            return self.follow_log(log, locked)
        try:
            meta, _ = read_meta(self.path, snapshot)
        except BaseException:
            snapshot.close()
            if log is not None:
                log.close()
            raise
        base = meta.get("base") or {}
        if (
            self.log is not None
            and self.log_gen == self.generation == base.get("generation")
            and meta["fingerprint"] == self.owner.fingerprint
            and meta["dim"] == self.owner.dim
        ):
            before = self.offset
            self.read_log(locked, until=int(base["offset"]))
            if self.offset >= base["offset"]:  # this state holds everything the new snapshot holds
                self.generation, self.base = meta["generation"], base
                self.snapshot_stat = stat(snapshot)
                snapshot.close()
                moved = self.offset > before
                return self.follow_log(log, locked) or moved
        snapshot.seek(0)
        return self.reload(snapshot, log, locked)

    def follow_log(self, log, locked: bool) -> bool:
        """The log at the path (``log``) against the one this state reads."""
        if log is None:
            return False
        if self.log is not None and os.fstat(log.fileno()).st_ino == os.fstat(self.log.fileno()).st_ino:
            log.close()
            return self.read_log(locked)
        try:
            generation, start = read_log_header(self.log_path, log)
        except BaseException:
            log.close()
            raise
        if generation == self.generation and (self.log is None or self.log_gen != self.generation):
            if self.log is not None:  # a compaction's new log: the old one's records from its base, moved up
                self.offset = start + self.offset - int((self.base or {})["offset"])
                self.log.close()
            else:
                self.offset = start
            self.log, self.log_gen = log, generation
            return self.read_log(locked)
        if self.log is None and generation != self.generation:
            self.stale_log = os.fstat(log.fileno()).st_ino
            log.close()
            return False
        log.close()  # not a change this state can follow (the files were edited by hand): read everything
        snapshot, log = self.open_files(locked)
        return self.reload(snapshot, log, locked)

    def refresh(self) -> bool:
        """Takes in other processes' writes (a ``stat`` when nothing changed); True if anything did."""
        with self.sync:
            return self.catch_up(locked=False)

    # ------------------------------------------------------------ writing

    @contextmanager
    def writing(self):
        """This thread as the only writer of the catalog, caught up, with a log of its generation.

        Raises:
            StoreError: another process held the writers' lock past ``WRITE_WAIT_S`` (nothing
                written; the API's 503, worth a retry).
        """
        with self.sync, ExitStack() as held:
            try:
                held.enter_context(file_lock(self.path, timeout=WRITE_WAIT_S))
            except DataError as exc:  # the store is busy, not the write wrong
                raise StoreError(f"{exc}; nothing was written", retry_after=5) from None
            self.catch_up(locked=True)
            if self.log is None or self.log_gen != self.generation:
                self.start_log()
            yield

    def start_log(self) -> None:
        """(Writers' lock) a log for this generation: an unfinished compaction's records after its
        base carried over (its last step, done now), or a stale log replaced by an empty one."""
        tail = b""
        if self.log is not None and self.base and self.log_gen == self.base.get("generation"):
            self.log.seek(int(self.base["offset"]))
            tail = self.log.read(self.offset - int(self.base["offset"]))
        head = header(self.generation)
        write_atomic(self.log_path, head + tail)
        if self.log is not None:
            self.log.close()
        self.log, self.log_gen = builtins.open(self.log_path, "rb"), self.generation
        self.offset = len(head) + len(tail)

    def append(self, meta: dict, vectors: np.ndarray | None = None) -> None:
        """(Writers' lock) one change: checked as every reader will decode it, written and fsynced,
        then applied to the owner's state. Nothing is written unless applying it cannot fail."""
        try:
            record = encode_record(meta, vectors)
        except (TypeError, ValueError, RecursionError) as exc:
            raise DataError(f"this change cannot be written to the catalog's log ({reason(exc)})") from None
        decoded = decode_record(record)
        if decoded is None or decoded[2] != len(record):
            raise DataError("this change cannot be read back as written; nothing was written")
        change = self.owner._change(decoded[0], vectors, strict=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.fstat(fd).st_size != self.offset:  # caught up under the lock: only another's bytes differ
                raise DataError(
                    f"{self.log_path}: changed by a writer that does not hold the lock "
                    f"({os.fstat(fd).st_size} bytes, {self.offset} read); nothing was written"
                )
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        change()
        self.offset += len(record)

    def log_bytes(self) -> int:
        """How much of the log this state has read past its header."""
        return max(self.offset - len(header(self.generation)), 0) if self.log is not None else 0

    # ------------------------------------------------------------ compaction

    def compact(self) -> bool:
        """Rewrites the snapshot from the current state and starts an empty log (see the module
        doc); False when another process rebuilt or compacted the catalog meanwhile."""
        with file_lock(self.path.with_name(self.path.name + ".compaction")):
            meta, arrays, old, offset = self.compact_prepare()
            staged = self.path.with_name(self.path.name + ".compacting")
            write_snapshot(staged, meta, arrays)  # the slow part, without the writers' lock
            del arrays
            return self.compact_commit(staged, meta, old, offset)

    def compact_prepare(self) -> tuple[dict, dict, str, int]:
        """Step 1: the state at log offset X as a snapshot of the next generation, based on (G, X)."""
        with self.writing():
            meta, arrays = self.owner._compact_state()
            meta["base"] = {"generation": self.generation, "offset": self.offset}
            return meta, arrays, self.generation, self.offset

    def compact_commit(self, staged: Path, meta: dict, old: str, offset: int) -> bool:
        """Steps 2-4 under the writers' lock: the new log, then the snapshot renamed in, then the log."""
        with self.writing():
            if self.generation != old:  # rebuilt or compacted by another process meanwhile
                staged.unlink(missing_ok=True)
                return False
            self.log.seek(offset)
            tail = self.log.read(self.offset - offset)
            head = header(meta["generation"])
            staged_log = self.log_path.with_name(self.log_path.name + ".compacting")
            write_atomic(staged_log, head + tail)
            os.replace(staged, self.path)  # the commit point
            _fsync_dir(self.path.parent)
            os.replace(staged_log, self.log_path)
            _fsync_dir(self.path.parent)
            self.log.close()
            self.log, self.log_gen = builtins.open(self.log_path, "rb"), meta["generation"]
            self.generation, self.base = meta["generation"], meta["base"]
            self.offset = len(head) + len(tail)
            self.snapshot_stat = stat_path(self.path)
            return True

    def close(self) -> None:
        with self.sync:
            if self.log is not None:
                self.log.close()
                self.log = None
