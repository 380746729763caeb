"""Three broker replicas through PgBouncer in transaction mode, on few server connections."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerproc import free_port, postgres_available, postgres_schema

from conftest import deploy, optsdata
from layerseal.broker.server import audit_verify
from layerseal.crypto.keys import generate_key
from layerseal.kbs.client import EnclaveClient, unwrap_key_packet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="pgbouncer is not installed"),
]

SERVER_POOL = 4


@pytest.fixture
def bouncer_url() -> Iterator[str]:
    """A private PgBouncer (transaction pooling) in front of a fresh schema of the shared server."""
    with postgres_schema() as direct:
        schema = direct.rsplit("%3D", 1)[1]
        port = free_port()
        # pgbouncer refuses to run as root and drops to 'nobody': its files must be readable
        work = Path(tempfile.mkdtemp(prefix="ls-pgbouncer-"))
        work.chmod(0o755)
        (work / "users.txt").write_text('"postgres" ""\n')
        # PgBouncer passes no 'options' startup parameter: the schema is set per server connection
        (work / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"brokerdb = host=127.0.0.1 port=5432 dbname=test user=postgres "
            f"connect_query='SET search_path TO \"{schema}\"'\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {work / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\nmax_client_conn = 500\n"
        )
        for f in work.iterdir():
            f.chmod(0o644)
        log = (work / "pgbouncer.log").open("wb")
        proc = subprocess.Popen(
            ["pgbouncer", "-u", "nobody", str(work / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((work / "pgbouncer.log").read_text()[-2000:]) from None
                    time.sleep(0.05)
            yield f"postgresql://postgres@127.0.0.1:{port}/brokerdb?prepare_threshold=0"
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
            shutil.rmtree(work, ignore_errors=True)


def test_three_replicas_through_pgbouncer_transaction_mode(
    bouncer_url: str, tmp_path: Path, sim_platform_dir: Path
) -> None:
    d = deploy(bouncer_url, tmp_path, sim_platform_dir, replicas=3, extra=["--db-pool-size", "2"])
    try:
        opts = [optsdata() for _ in range(4)]
        packets = [
            d.acme.create_layer_key("registry.local/bouncer", f"sha256:{i:064x}", o)
            for i, o in enumerate(opts)
        ]
        kids = [json.loads(p)["kid"] for p in packets]
        assert all(b.proc.poll() is None for b in d.brokers)
        for broker in d.brokers:  # every replica attests and releases through the pooler
            with EnclaveClient(broker.url, d.attester, generate_key("EC-P256")) as enclave:
                for _ in range(10):  # past psycopg's default prepare threshold (5)
                    keks = enclave.get_keys(kids)
                    for packet, o in zip(packets, opts, strict=True):
                        assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
        releases = [
            e for e in d.acme.audit(limit=10000) if e["action"] == "release" and e["decision"] == "ok"
        ]
        assert len(releases) == 30
        assert len({e["chain"] for e in releases}) == 3  # one chain per replica
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()
    report = audit_verify(bouncer_url, master_key_file=tmp_path / "master.key")
    assert report.ok and report.chains >= 3, report.problems
