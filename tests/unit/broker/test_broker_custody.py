"""Envelope encryption of key material, the master key file rules and key packets."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from layerseal.broker.custody import MasterKeyCustody, record_aad
from layerseal.broker.masterkey import ENV_VAR, load_master_key
from layerseal.errors import BadInputError, DeniedError, IntegrityError
from layerseal.kbs.packets import ResourcePath, make_key_packet, unwrap_key_packet


def test_seal_unseal_binds_aad_and_master_key() -> None:
    custody = MasterKeyCustody(os.urandom(32))
    sealed = custody.seal(b"k" * 32, record_aad("kek", "kabc", 1))
    assert b"k" * 32 not in sealed
    assert custody.unseal(sealed, record_aad("kek", "kabc", 1)) == b"k" * 32
    with pytest.raises(IntegrityError, match="forgery"):
        custody.unseal(sealed, record_aad("kek", "kabc", 2))  # moved to another version
    with pytest.raises(IntegrityError, match="master key id"):
        MasterKeyCustody(os.urandom(32)).unseal(sealed, record_aad("kek", "kabc", 1))
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(IntegrityError):
        custody.unseal(tampered, record_aad("kek", "kabc", 1))
    assert "key_id" in repr(custody) and str(sealed[:4]) not in repr(custody)


def test_master_key_file_created_0600_and_loose_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "mk"
    key = load_master_key(path, create=True, environ={})
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path, environ={}) == key
    path.chmod(0o640)
    with pytest.raises(DeniedError, match="0600"):
        load_master_key(path, environ={})
    env_key = os.urandom(32)
    assert load_master_key(None, environ={ENV_VAR: base64.b64encode(env_key).decode()}) == env_key
    with pytest.raises(BadInputError, match="32 bytes"):
        load_master_key(None, environ={ENV_VAR: base64.b64encode(b"short").decode()})


def test_key_packet_round_trip_and_kid_scheme() -> None:
    path = ResourcePath("acme", "k" + "a" * 26, 3)
    assert path.kid == "kbs:///acme/layer-key/k" + "a" * 26 + ".3"
    assert ResourcePath.parse(path.kid) == path
    assert ResourcePath.parse("kbs://kbs.example:8080/acme/layer-key/k" + "a" * 26) == ResourcePath(
        "acme", "k" + "a" * 26
    )
    kek = os.urandom(32)
    packet = make_key_packet(path.kid, kek, b'{"symkey":"x"}')
    obj = json.loads(packet)
    assert obj["wrap_type"] == "A256GCM" and len(base64.b64decode(obj["iv"])) == 12
    assert unwrap_key_packet(packet, kek) == b'{"symkey":"x"}'
    with pytest.raises(IntegrityError):
        unwrap_key_packet(packet, os.urandom(32))
    for bad in [
        "acme/layer-key",
        "Acme/layer-key/k" + "a" * 26,
        "acme/other/k" + "a" * 26,
        "acme/layer-key/k1.0",
        "a/b/c/d",
    ]:
        with pytest.raises(BadInputError):
            ResourcePath.parse(bad)
