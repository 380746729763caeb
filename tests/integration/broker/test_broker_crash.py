"""Crash safety: a broker killed with SIGKILL while creating keys loses no acknowledged key."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
from brokerproc import start_broker

from conftest import deploy, optsdata
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError
from layerseal.kbs.client import EnclaveClient, PublisherClient

pytestmark = pytest.mark.integration


def test_sigkill_while_creating_keys_loses_no_acknowledged_key(
    tmp_path: Path, sim_platform_dir: Path
) -> None:
    db = str(tmp_path / "crash.db")
    d = deploy(db, tmp_path, sim_platform_dir)
    acked: list[tuple[bytes, bytes]] = []
    stop = threading.Event()
    token = d.acme._headers["Authorization"].removeprefix("Bearer ")

    def writer() -> None:
        with PublisherClient(d.url, token, timeout=5) as c:
            while not stop.is_set():
                o = optsdata()
                try:
                    packet = c.create_layer_key("registry.local/crash", "sha256:" + "7" * 64, o)
                except LayersealError:
                    return  # the broker died mid-request: this key was never acknowledged
                acked.append((packet, o))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        threads[0].join(0.05)
    d.brokers[0].kill(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    assert d.brokers[0].proc.returncode == -signal.SIGKILL
    for c in d.clients:
        c.close()

    restarted = start_broker(
        db, tmp_path, master_key_file=tmp_path / "master.key", admin_token_file=tmp_path / "admin.token"
    )
    try:
        with PublisherClient(restarted.url, token) as c:
            listed = {k["kid"] for k in c.list_keys("registry.local/crash")}
        kids = [json.loads(p)["kid"] for p, _ in acked]
        assert set(kids) <= listed
        with EnclaveClient(restarted.url, d.attester, generate_key("EC-P256")) as enclave:
            for i in range(0, len(acked), 50):
                chunk = acked[i : i + 50]
                keks = enclave.get_keys([json.loads(p)["kid"] for p, _ in chunk])
                for packet, o in chunk:
                    from layerseal.kbs.client import unwrap_key_packet

                    assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
    finally:
        restarted.kill()
