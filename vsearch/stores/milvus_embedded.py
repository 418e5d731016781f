"""A Milvus standalone server on this machine, from PyPI's ``milvus`` package ("embedded Milvus").

The package (``pip install 'vsearch[milvus-server]'``, Linux x86-64) ships the real Milvus
2.3 standalone server, compressed: the C++ engine with its HNSW and IVF indexes, an embedded
etcd, RocksMQ and local storage. This module unpacks it once (``VSEARCH_MILVUS_HOME``, default
``~/.cache/vsearch/milvus-VERSION``), writes its configuration into the data folder and runs
it::

    python -m vsearch.stores.milvus_embedded --data /var/lib/vsearch-milvus --port 19530
    vsearch index build photos/ --store milvus:http://127.0.0.1:19530

Every port is chosen here (free ones unless ``--port`` names the client port) and every
component advertises 127.0.0.1; etcd's client and peer ports are moved off 2379/2380 and
bound to 127.0.0.1. Milvus 2.3 itself has no setting for its listening address: its gRPC
and metrics ports listen on every interface, so keep them behind the host's firewall (a
production server, 2.4 or later, is deployed by Milvus' own means and used the same way,
``milvus:http://HOST:19530``). The data folder holds everything the server keeps (etcd,
the message log, segments, logs); a server started again on it has every acknowledged write.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vsearch.artifacts import file_lock
from vsearch.errors import DataError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120
# Milvus 2.3's graceful stop can hang once collections are loaded (its coordinators stop before
# the nodes that call them): after this long it is killed, which loses nothing acknowledged.
STOP_TIMEOUT_S = 10
# One machine's server: the query coordinator looks for work every 200 ms rather than every
# second (a collection loads in about 1 s rather than 3-4).
SETTINGS: dict[str, object] = {"queryCoord.checkInterval": 200, "queryCoord.distPullInterval": 100}
# Sections of milvus.yaml whose component advertises an address (`ip:`).
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def _package():
    try:
        import milvus
    except ImportError:
        raise DataError(
            "the embedded Milvus server needs PyPI's `milvus` package (Linux x86-64): "
            "pip install 'vsearch[milvus-server]'"
        ) from None
    return milvus


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def unpack(home: str | os.PathLike | None = None) -> Path:
    """The folder holding the server's executable and libraries, unpacked once per version.

    The package's own unpacker skips files whose checksum is unchanged; the lock keeps two
    processes from writing the same executable at once.
    """
    milvus = _package()
    home = Path(
        home
        or os.environ.get("VSEARCH_MILVUS_HOME")
        or Path.home() / ".cache" / "vsearch" / f"milvus-{milvus.__version__}"
    )
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / "unpack", timeout=300):
        milvus._initialize_data_files(str(home))  # -> home/bin
    return home / "bin"


class EmbeddedMilvus:
    """One Milvus standalone process over ``data`` (a folder), its client port ``port`` (0: a free one).

    ``start()`` returns the URI for ``milvus:URI``; ``stop()`` ends it (``hard=True``: SIGKILL,
    as a crash would); ``start()`` again runs it on the same data and ports.
    """

    def __init__(
        self,
        data: str | os.PathLike,
        port: int = 0,
        home: str | os.PathLike | None = None,
        settings: dict[str, object] | None = None,
    ):
        self.data = Path(data).expanduser().resolve()
        self.port = int(port) or free_port()
        self.home = home
        self.settings = dict(settings or {})  # milvus.yaml keys ("queryCoord.checkInterval") -> values
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self._metrics_port = 0
        self._env: dict[str, str] | None = None  # configured once: a restart keeps every port

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _configure(self) -> dict[str, str]:
        """Writes ``configs/milvus.yaml`` and ``configs/etcd.yaml``; the server's environment.

        Once per server: components find each other through the addresses etcd keeps, and a
        restart on other ports would wait out the old ones' leases.
        """
        milvus = _package()
        configs = self.data / "configs"
        config = milvus.MilvusServerConfig(data_dir=str(self.data))
        ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
        ports["proxy_port"] = self.port
        config.update(**ports)
        for component in COMPONENTS:
            config.set(f"{component}.ip", HOST)
        for key, value in {**SETTINGS, **self.settings}.items():
            config.set(key, value)
        config.resolve()  # fills the template into configs/milvus.yaml
        client, peer = free_port(), free_port()
        (configs / "etcd.yaml").write_text(
            f"name: default\n"
            f"listen-client-urls: http://{HOST}:{client}\nadvertise-client-urls: http://{HOST}:{client}\n"
            f"listen-peer-urls: http://{HOST}:{peer}\ninitial-advertise-peer-urls: http://{HOST}:{peer}\n"
            f"initial-cluster: default=http://{HOST}:{peer}\n"
        )
        self._metrics_port = free_port()
        return {
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self._metrics_port),
            "MILVUS_RUN_DIR": str(self.data / "run"),
            "MILVUSCONF": str(configs),
            "ETCD_CONFIG_PATH": str(configs / "etcd.yaml"),
        }

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Runs the server and waits until it answers; its URI.

        Raises:
            DataError: it exited or did not answer within ``timeout`` seconds (its log's end quoted).
        """
        if self.process is not None:
            return self.uri
        binaries = unpack(self.home)
        self.data.mkdir(parents=True, exist_ok=True)
        if self._env is None:
            self._env = self._configure()
        env = {**os.environ, **self._env}
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binaries), os.environ.get("LD_LIBRARY_PATH")]))
        log_path = self.data / "logs" / "server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115  (held open for the server's life)
        self.process = subprocess.Popen(
            [str(binaries / "milvus"), "run", "standalone"],
            cwd=self.data,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the server through stop() only
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop(hard=True)
                tail = log_path.read_text(errors="replace")[-1500:]
                raise DataError(
                    f"Milvus server on {self.data} did not start ({'exit ' + str(code) if code is not None else f'no answer in {timeout:g} s'}): ...{tail}"
                )
            time.sleep(0.3)
        return self.uri

    def _answers(self) -> bool:
        """Healthy by its metrics port, and taking client calls."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self._metrics_port}/healthz", timeout=2) as answer:
                if b"OK" not in answer.read():
                    return False
        except OSError:
            return False
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=5)
        except Exception:  # noqa: BLE001  (pymilvus raises several kinds while the proxy comes up)
            return False
        try:
            client.list_collections()
            return True
        except Exception:  # noqa: BLE001
            return False
        finally:
            client.close()

    def stop(self, hard: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ends the server: SIGTERM and a wait (``hard``: SIGKILL at once)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedMilvus:
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop()


@contextlib.contextmanager
def running(data: str | os.PathLike, port: int = 0) -> Iterator[EmbeddedMilvus]:
    """A started server over ``data``, stopped on leaving."""
    server = EmbeddedMilvus(data, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the server's data folder (kept across restarts)")
    ap.add_argument("--port", type=int, default=19530, help="the client port on 127.0.0.1 (0: a free one)")
    args = ap.parse_args(argv)
    server = EmbeddedMilvus(args.data, args.port)
    try:
        uri = server.start()
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"Milvus {_package().__version__} serving {args.data} at {uri}; Ctrl-C stops it", flush=True)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
