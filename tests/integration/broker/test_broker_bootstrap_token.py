"""The bootstrap admin token goes to a 0600 file next to the database, never to the output."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from brokerproc import free_port

pytestmark = pytest.mark.integration


def test_admin_token_written_to_a_private_file_not_printed(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "broker.db"
    log = tmp_path / "out.log"
    cmd = [
        sys.executable,
        "-m",
        "layerseal.cli.main",
        "broker",
        "serve",
        "--db",
        str(db),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token_file = tmp_path / "broker.db.admin-token"
        token = token_file.read_text().strip()
        assert token.startswith("lsk_")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "broker.db.master-key").stat().st_mode) == 0o600
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/keys", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    output = log.read_text()
    assert token not in output and str(token_file) in output
