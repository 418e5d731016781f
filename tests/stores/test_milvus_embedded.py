"""The embedded Milvus server the tests and the benchmark start (vsearch/stores/milvus_embedded.py):
on this machine's loopback, off the ports of another etcd or Milvus. Its restarts keeping every
acknowledged write are tests/stores/test_milvus.py's and tests/web/test_store_contract.py's."""

from __future__ import annotations

import re
from pathlib import Path


def listening(port: int) -> set[str]:
    """The IPv4 addresses (hex, as /proc/net/tcp has them) with a socket listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(address)
    return found


def test_its_etcd_listens_on_loopback_off_the_default_ports(milvus_process):
    """etcd's client and peer ports are free ones, not 2379/2380 (another etcd on the machine keeps
    its own), and bound to 127.0.0.1 only."""
    etcd = (milvus_process.data / "configs" / "etcd.yaml").read_text()
    urls = set(re.findall(r"http://([\d.]+):(\d+)", etcd))
    assert len({port for _, port in urls}) == 2, etcd  # the client port and the peer port
    for host, port in urls:
        assert host == "127.0.0.1" and port not in ("2379", "2380"), etcd
        assert listening(int(port)) == {"0100007F"}, port  # 127.0.0.1, nothing else
    assert milvus_process.uri.startswith("http://127.0.0.1:")


def test_its_components_advertise_loopback(milvus_process):
    """Each component tells the others where it is: 127.0.0.1, never the machine's first address."""
    config = (milvus_process.data / "configs" / "milvus.yaml").read_text()
    addresses = re.findall(r"^\s+ip:\s*(\S*)", config, flags=re.MULTILINE)
    assert len(addresses) >= 7 and set(addresses) == {"127.0.0.1"}, addresses
