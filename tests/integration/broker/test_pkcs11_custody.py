"""A broker whose master key lives in a PKCS#11 token (SoftHSM2): keys survive restarts,
and the database without the token opens nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from brokerproc import start_broker

from conftest import deploy, optsdata
from layerseal.broker.server import open_broker
from layerseal.crypto.keys import generate_key
from layerseal.errors import IntegrityError
from layerseal.kbs.client import EnclaveClient, PublisherClient, unwrap_key_packet

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN, PIN = "87654321", "123456"

# run in a child so this test process never loads SoftHSM with one token directory and
# then needs another
_KEYGEN = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
lib = pkcs11.lib(sys.argv[1])
with lib.get_token(token_label=sys.argv[2]).open(rw=True, user_pin=sys.argv[3]) as s:
    s.generate_key(KeyType.AES, 256, label=sys.argv[4], store=True, template={
        Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
with lib.get_token(token_label=sys.argv[2]).open(user_pin=sys.argv[3]) as s:
    key = s.get_key(label=sys.argv[4], key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY)
    try:
        key[Attribute.VALUE]
    except pkcs11.AttributeSensitive:
        print("value not readable")
    print("extractable", key[Attribute.EXTRACTABLE])
"""


def _softhsm_ready() -> bool:
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        return False
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _softhsm_ready(), reason="SoftHSM2 or python-pkcs11 missing"),
]


def make_token(base: Path, label: str = "t", key_label: str = "layerseal-master") -> dict[str, str]:
    """A fresh SoftHSM2 token in *base* with a non-extractable AES-256 key; returns its env."""
    tokens = base / "tokens"
    tokens.mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", _KEYGEN, MODULE, label, PIN, key_label],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "value not readable" in out and "extractable False" in out, out
    return {"SOFTHSM2_CONF": str(conf)}


def test_broker_with_token_master_key(
    tmp_path: Path, sim_platform_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hsm_env = make_token(tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", hsm_env["SOFTHSM2_CONF"])
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    uri = f"pkcs11:token=t;object=layerseal-master?pin-source=file:{pin_file}&module-path={MODULE}"
    db = str(tmp_path / "broker.db")

    d = deploy(db, tmp_path, sim_platform_dir, extra=["--master-key", uri])
    token = d.acme._headers["Authorization"].removeprefix("Bearer ")
    created: list[tuple[bytes, bytes]] = []
    try:
        for i in range(3):
            o = optsdata()
            created.append((d.acme.create_layer_key("registry.local/hsm", "sha256:" + f"{i}" * 64, o), o))
        with EnclaveClient(d.url, d.attester, generate_key("EC-P256")) as enclave:
            keks = enclave.get_keys([json.loads(p)["kid"] for p, _ in created])
        for packet, o in created:
            assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
        assert "pin" not in d.brokers[0].log.read_text().lower().replace("pinned", "")
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()

    # restart on the same token: every key still opens
    again = start_broker(
        db,
        tmp_path,
        master_key_file=tmp_path / "master.key",
        admin_token_file=tmp_path / "admin.token",
        extra=["--master-key", uri],
    )
    try:
        with PublisherClient(again.url, token) as c:
            assert len(c.list_keys("registry.local/hsm")) == 3
            o = optsdata()
            created.append((c.create_layer_key("registry.local/hsm", "sha256:" + "9" * 64, o), o))
        with EnclaveClient(again.url, d.attester, generate_key("EC-P256")) as enclave:
            keks = enclave.get_keys([json.loads(p)["kid"] for p, _ in created])
        for packet, o in created:
            assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
    finally:
        again.kill()

    # the database alone: every sealed blob is in the token format, and no other key opens it
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        blobs = [
            bytes(v)
            for t in tables
            for row in conn.execute(f'select * from "{t}"')  # table names come from sqlite itself
            for v in row
            if isinstance(v, bytes) and len(v) > 81 and v[:1] == b"\x02"
        ]
    assert len(blobs) >= 5  # the token signing secret and four KEKs
    with pytest.raises(IntegrityError, match="sealed key: expected format 1"):
        open_broker(db, master_key_file=tmp_path / "master.key")  # the file key deploy() also wrote

    # a token with the same labels but its own AES key does not open the database either
    other_env = make_token(tmp_path / "hsm2")
    monkeypatch.setenv("SOFTHSM2_CONF", other_env["SOFTHSM2_CONF"])
    with pytest.raises(RuntimeError, match="sealed key: expected a data key the token's master key opens"):
        start_broker(
            db,
            tmp_path,
            master_key_file=tmp_path / "master.key",
            admin_token_file=tmp_path / "admin.token",
            extra=["--master-key", uri],
        )


def test_wrong_pin_and_missing_key_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hsm_env = make_token(tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", hsm_env["SOFTHSM2_CONF"])
    bad = f"pkcs11:token=t;object=layerseal-master?pin-value=000000&module-path={MODULE}"
    with pytest.raises(RuntimeError) as info:
        start_broker(
            str(tmp_path / "b.db"),
            tmp_path,
            master_key_file=tmp_path / "k",
            admin_token_file=tmp_path / "a",
            extra=["--master-key", bad],
        )
    assert "expected the user PIN, seen an incorrect one" in str(info.value)
    assert "000000" not in str(info.value)
