"""ocicrypt annotations: exact byte format, parse errors, captured skopeo output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from layerseal.errors import BadInputError
from layerseal.image.digest import Digest
from layerseal.image.encryption import (
    ANNOTATION_PUBOPTS,
    PrivateOptions,
    PublicOptions,
    keys_annotation,
    strip_encryption,
    wrapped_keys,
)
from layerseal.image.manifest import Manifest


def test_pubopts_bytes_match_ocicrypt_layout() -> None:
    pub = PublicOptions("AES_256_CTR_HMAC_SHA256", bytes(range(32)))
    text = pub.to_json_bytes().decode()
    assert text == (
        '{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"'
        + base64.b64encode(bytes(range(32))).decode()
        + '","cipheroptions":{}}'
    )
    assert PublicOptions.from_annotation(pub.to_annotation()) == pub


def test_private_options_bytes_and_redaction() -> None:
    priv = PrivateOptions(b"k" * 32, b"n" * 16, Digest.of(b"x"))
    text = priv.to_json_bytes().decode()
    assert text.startswith('{"symkey":"')
    assert text.index('"digest"') < text.index('"cipheroptions":{"nonce":"')
    assert PrivateOptions.from_json_bytes(priv.to_json_bytes()) == priv
    assert "a2trk" not in repr(priv) and "redacted" in repr(priv)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"cipher":"AES_128_GCM","hmac":"' + "A" * 43 + '=","cipheroptions":{}}', "layer cipher: expected"),
        ('{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAA","cipheroptions":{}}', "expected 32 bytes"),
        ('{"cipher":"AES_256_CTR_HMAC_SHA256"}', "expected a base64 string"),
        ("not json", "expected JSON"),
    ],
)
def test_garbled_pubopts_are_named(payload: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        PublicOptions.from_annotation(base64.b64encode(payload.encode()).decode())


def test_pubopts_not_base64() -> None:
    with pytest.raises(BadInputError, match="standard base64"):
        PublicOptions.from_annotation("!!!")


def test_private_options_missing_nonce() -> None:
    data = json.dumps(
        {"symkey": base64.b64encode(b"k" * 32).decode(), "digest": str(Digest.of(b""))}
    ).encode()
    with pytest.raises(BadInputError, match="cipheroptions"):
        PrivateOptions.from_json_bytes(data)


def test_wrapped_keys_split_and_strip() -> None:
    name, value = keys_annotation("jwe", [b"one", b"two"])
    ann = {name: value, ANNOTATION_PUBOPTS: "x", "other": "kept"}
    assert wrapped_keys(ann) == {"jwe": [b"one", b"two"]}
    assert strip_encryption(ann) == {"other": "kept"}


def test_captured_skopeo_provider_manifest_parses(testdata: Path) -> None:
    data = (testdata / "keyprovider" / "skopeo-1.14-provider-encrypted-manifest.json").read_bytes()
    m = Manifest.from_bytes(data)
    assert m.to_bytes() == data.strip()  # byte-identical re-serialisation of Go output
    for layer in m.layers:
        pub = PublicOptions.from_annotation(layer.annotations[ANNOTATION_PUBOPTS])
        assert pub.cipher == "AES_256_CTR_HMAC_SHA256" and len(pub.hmac) == 32
        assert list(wrapped_keys(layer.annotations)) == ["provider.myprov"]
