"""Issue 15 operations: ``broker migrate``, ``backup``/``restore`` while serving (SQLite and
PostgreSQL), and ``master-key rotate`` surviving a failure midway."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from brokerproc import postgres_available, postgres_schema, start_broker

import layerseal.broker as broker_pkg
from conftest import Deployment, deploy, optsdata
from layerseal.broker import rekey
from layerseal.broker.custody import MasterKeyCustody
from layerseal.crypto.keys import generate_key
from layerseal.kbs.client import EnclaveClient
from layerseal.kbs.packets import unwrap_key_packet
from support.layerseal_cli import run_layerseal

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAYERSEAL_MASTER_KEY"}
    return run_layerseal("broker", *args, env=env, cwd=cwd, timeout=120)


@contextmanager
def fresh_db(kind: str, tmp: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield str(tmp / f"{name}.db")
        return
    with postgres_schema() as url:
        yield url


def release(url: str, d: Deployment, packets: list[bytes]) -> dict[str, bytes]:
    with EnclaveClient(url, d.attester, generate_key("EC-P256")) as enclave:
        return enclave.get_keys([json.loads(p)["kid"] for p in packets])


def keys_then_stopped(
    db: str, tmp_path: Path, platform_dir: Path, count: int
) -> tuple[Deployment, list[bytes], list[bytes]]:
    """Deploy, create *count* layer keys, stop the brokers: (deployment, options, key packets)."""
    d = deploy(db, tmp_path, platform_dir)
    opts = [optsdata() for _ in range(count)]
    packets = [
        d.acme.create_layer_key("registry.local/app", f"sha256:{i:064x}", o) for i, o in enumerate(opts)
    ]
    for b in d.brokers:
        b.kill()
    return d, opts, packets


def serve_and_release_all(
    db: str, tmp_path: Path, d: Deployment, packets: list[bytes], opts: list[bytes]
) -> None:
    """A broker on *db* with ``tmp_path/master.key`` releases every packet, each opening to its options."""
    broker = start_broker(
        db, tmp_path, master_key_file=tmp_path / "master.key", admin_token_file=tmp_path / "admin.token"
    )
    try:
        keks = release(broker.url, d, packets)
        assert [unwrap_key_packet(p, keks[json.loads(p)["kid"]]) for p in packets] == opts
    finally:
        broker.kill()


def test_migrate_is_explicit_and_idempotent(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    first = cli("migrate", "--db", db)
    assert first.returncode == 0, first.stderr
    # the head is the newest migration script (revisions are numbered 0001, 0002, ...)
    versions = Path(broker_pkg.__file__).parent / "migrations" / "versions"
    head = max(p.name[:4] for p in versions.glob("0*.py"))
    assert f"migrated from revision none to {head}" in first.stdout
    again = cli("migrate", "--db", db)
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_backup_while_serving_restores_into_fresh_db_and_keys_release(
    kind: str, tmp_path: Path, sim_platform_dir: Path
) -> None:
    if kind == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    with fresh_db(kind, tmp_path, "src") as src:
        d = deploy(src, tmp_path, sim_platform_dir)
        try:
            opts = [optsdata() for _ in range(3)]
            packets = [
                d.acme.create_layer_key("registry.local/app", f"sha256:{i:064x}", o)
                for i, o in enumerate(opts)
            ]
            assert release(d.url, d, packets[:1])  # an audit row for the release too
            # publishers keep writing while the backup runs: it must be one consistent snapshot
            stop = threading.Event()

            def writer() -> None:
                while not stop.is_set():
                    d.acme.create_layer_key(
                        "registry.local/busy", f"sha256:{os.urandom(32).hex()}", optsdata()
                    )

            t = threading.Thread(target=writer)
            t.start()
            try:
                out = tmp_path / "broker.backup"
                r = cli(
                    "backup",
                    "--db",
                    src,
                    "--master-key-file",
                    str(tmp_path / "master.key"),
                    "--out",
                    str(out),
                )
            finally:
                stop.set()
                t.join()
            assert r.returncode == 0, r.stderr
            assert "master key included" in r.stdout
            assert (out.stat().st_mode & 0o777) == 0o600
        finally:
            for c in d.clients:
                c.close()
            for b in d.brokers:
                b.kill()

    lines = [json.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    counted = {t: sum(1 for x in lines[1:-1] if x["t"] == t) for t in lines[-1]["rows"]}
    assert counted == lines[-1]["rows"]  # the trailer's counts are the rows written

    with fresh_db(kind, tmp_path, "restored") as dst:
        key = tmp_path / "restored.key"
        r = cli("restore", "--db", dst, "--master-key-file", str(key), str(out))
        assert r.returncode == 0, r.stderr
        assert (key.stat().st_mode & 0o777) == 0o600
        assert key.read_text() == (tmp_path / "master.key").read_text()
        # a second restore into the now non-empty database is refused, naming why
        again = cli("restore", "--db", dst, "--master-key-file", str(key), str(out))
        assert again.returncode == 2 and "expected an empty database" in again.stderr
        verify = cli("audit", "verify", "--db", dst, "--master-key-file", str(key))
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
        broker = start_broker(dst, tmp_path, master_key_file=key, admin_token_file=tmp_path / "admin.token")
        try:
            keks = release(broker.url, d, packets)
            for packet, o in zip(packets, opts, strict=True):
                assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
        finally:
            broker.kill()


def test_damaged_or_truncated_backup_is_refused(tmp_path: Path, sim_platform_dir: Path) -> None:
    d = deploy(str(tmp_path / "b.db"), tmp_path, sim_platform_dir)
    for b in d.brokers:
        b.kill()
    out = tmp_path / "b.backup"

    def backup() -> subprocess.CompletedProcess[str]:
        return cli(
            "backup",
            "--db",
            str(tmp_path / "b.db"),
            "--master-key-file",
            str(tmp_path / "master.key"),
            "--out",
            str(out),
        )

    assert backup().returncode == 0
    lines = gzip.decompress(out.read_bytes()).splitlines()
    cut = tmp_path / "cut.backup"
    cut.write_bytes(gzip.compress(b"\n".join(lines[:-3]) + b"\n"))
    r = cli("restore", "--db", str(tmp_path / "x.db"), "--master-key-file", str(tmp_path / "x.key"), str(cut))
    assert r.returncode == 3 and "truncated" in r.stderr, r.stderr
    edited = tmp_path / "edited.backup"
    edited.write_bytes(
        gzip.compress(b"\n".join([*lines[:2], lines[2].replace(b'"', b'"', 1) + b" ", *lines[3:]]) + b"\n")
    )
    r = cli(
        "restore", "--db", str(tmp_path / "y.db"), "--master-key-file", str(tmp_path / "y.key"), str(edited)
    )
    assert r.returncode == 3 and "sha256" in r.stderr, r.stderr
    # a row whose binary column is no base64 (the trailer rewritten to match) is bad input
    rows = [json.loads(x) for x in lines[1:-1]]
    at = next(i for i, x in enumerate(rows) if x["t"] == "secrets")
    rows[at]["r"]["sealed"] = "not base64!"
    body = [lines[0], *(json.dumps(x, separators=(",", ":"), sort_keys=True).encode() for x in rows)]
    trailer = dict(
        json.loads(lines[-1]), sha256=hashlib.sha256(b"".join(x + b"\n" for x in body)).hexdigest()
    )
    bad = tmp_path / "bad.backup"
    bad.write_bytes(gzip.compress(b"\n".join([*body, json.dumps(trailer).encode()]) + b"\n"))
    r = cli("restore", "--db", str(tmp_path / "z.db"), "--master-key-file", str(tmp_path / "z.key"), str(bad))
    assert r.returncode == 2, r.stderr
    assert f"line {at + 2}: table secrets field 'sealed': expected standard base64" in r.stderr
    assert not (tmp_path / "x.key").exists() and not (tmp_path / "y.key").exists()
    assert not (tmp_path / "z.key").exists() and not (tmp_path / "z.db").exists()
    again = backup()
    assert again.returncode == 2 and "existing" in again.stderr


def test_master_key_rotation_survives_a_failure_midway(
    tmp_path: Path, sim_platform_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "r.db")
    key_file = tmp_path / "master.key"
    d, opts, packets = keys_then_stopped(db, tmp_path, sim_platform_dir, 3)
    old = key_file.read_text()

    def serve_and_release() -> None:
        serve_and_release_all(db, tmp_path, d, packets, opts)

    # the process dies in the middle of resealing (after the key file changed): rolled back
    calls = {"n": 0}
    real_seal = MasterKeyCustody.seal

    def dying_seal(self: MasterKeyCustody, plaintext: bytes, aad: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed midway")
        return real_seal(self, plaintext, aad)

    monkeypatch.setattr(MasterKeyCustody, "seal", dying_seal)
    with pytest.raises(KeyboardInterrupt):
        rekey.rotate_master_key(db, key_file)
    monkeypatch.setattr(MasterKeyCustody, "seal", real_seal)
    assert len(key_file.read_text().split()) == 2 and key_file.read_text().split()[1] == old.strip()
    serve_and_release()  # usable: the old key still opens everything

    r = cli("master-key", "rotate", "--db", db, "--master-key-file", str(key_file))
    assert r.returncode == 0, r.stderr
    assert "retired" in r.stdout
    serve_and_release()
    # a backup taken while the retired key is still kept restores with both keys
    out = tmp_path / "rotated.backup"
    r = cli("backup", "--db", db, "--master-key-file", str(key_file), "--out", str(out))
    assert r.returncode == 0, r.stderr
    restored_key = tmp_path / "restored.key"
    r = cli(
        "restore", "--db", str(tmp_path / "restored.db"), "--master-key-file", str(restored_key), str(out)
    )
    assert r.returncode == 0, r.stderr
    assert restored_key.read_text().split() == key_file.read_text().split()
    r = cli("audit", "verify", "--db", str(tmp_path / "restored.db"), "--master-key-file", str(restored_key))
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("master-key", "rotate", "--db", db, "--master-key-file", str(key_file), "--drop-retired")
    assert r.returncode == 0, r.stderr
    assert len(key_file.read_text().split()) == 1 and key_file.read_text() != old
    serve_and_release()
    # the old key alone no longer opens the database
    old_file = tmp_path / "old.key"
    old_file.write_text(old)
    old_file.chmod(0o600)
    r = cli("audit", "verify", "--db", db, "--master-key-file", str(old_file))
    assert r.returncode != 0 and "different master key" in (r.stdout + r.stderr)
    for c in d.clients:
        c.close()


def test_master_key_rotation_killed_by_sigkill_leaves_a_usable_state(
    tmp_path: Path, sim_platform_dir: Path
) -> None:
    """A real SIGKILL of ``master-key rotate`` as soon as the key file changed (whatever the
    reseal transaction had done by then): brokers start and release, and a rerun finishes."""
    import signal
    import time

    db = str(tmp_path / "k.db")
    key_file = tmp_path / "master.key"
    d, opts, packets = keys_then_stopped(db, tmp_path, sim_platform_dir, 20)
    old = key_file.read_text()
    env = {k: v for k, v in os.environ.items() if k != "LAYERSEAL_MASTER_KEY"}
    cmd = [sys.executable, "-m", "layerseal.cli.main", "broker", "master-key", "rotate", "--db", db]
    proc = subprocess.Popen([*cmd, "--master-key-file", str(key_file)], env=env)
    deadline = time.monotonic() + 60
    while key_file.read_text() == old and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert key_file.read_text() != old  # the key file was replaced whole, never half-written
    assert old.strip() in key_file.read_text().split()
    serve_and_release_all(db, tmp_path, d, packets, opts)
    r = cli("master-key", "rotate", "--db", db, "--master-key-file", str(key_file), "--drop-retired")
    assert r.returncode == 0, r.stderr
    assert len(key_file.read_text().split()) == 1
    broker = start_broker(db, tmp_path, master_key_file=key_file, admin_token_file=tmp_path / "admin.token")
    try:
        keks = release(broker.url, d, packets)
        assert len(keks) == len(packets)
    finally:
        broker.kill()
    for c in d.clients:
        c.close()
