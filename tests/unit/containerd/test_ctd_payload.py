"""The fd-3 payload containerd passes: google.protobuf.Any around imgcrypt's JSON Payload."""

from __future__ import annotations

import base64
import json

import pytest

from layerseal.containerd.payload import PAYLOAD_URI, encode_payload, parse_payload
from layerseal.errors import BadInputError
from layerseal.keyprovider.pbcodec import encode_varint

DESC = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
    "digest": "sha256:" + "ab" * 32,
    "size": 123,
    "annotations": {"org.opencontainers.image.enc.keys.jwe": "e30="},
}


def any_bytes(type_url: str, value: bytes) -> bytes:
    url = type_url.encode()
    return b"\x0a" + encode_varint(len(url)) + url + b"\x12" + encode_varint(len(value)) + value


def test_round_trip_with_keys_and_descriptor() -> None:
    p = parse_payload(encode_payload({"privkeys": [b"KEY1", b"KEY2"], "privkeys-passwords": [b""]}, DESC))
    assert p.parameters["privkeys"] == (b"KEY1", b"KEY2")
    assert p.descriptor is not None and str(p.descriptor.digest) == DESC["digest"]
    assert p.descriptor.annotations["org.opencontainers.image.enc.keys.jwe"] == "e30="
    assert "KEY1" not in repr(p)


def test_cri_node_key_model_payload_null_parameters() -> None:
    # what the CRI plugin sends with key_model = "node": imgcrypt.Payload{} plus the descriptor
    value = json.dumps({"DecryptConfig": {"Parameters": None}, "Descriptor": DESC}).encode()
    p = parse_payload(any_bytes(PAYLOAD_URI, value))
    assert dict(p.parameters) == {}
    assert p.descriptor is not None and p.descriptor.size == 123


def test_zero_descriptor_counts_as_absent() -> None:
    value = json.dumps({"DecryptConfig": {}, "Descriptor": {"mediaType": "", "digest": "", "size": 0}})
    assert parse_payload(any_bytes(PAYLOAD_URI, value.encode())).descriptor is None


def test_no_payload_is_empty() -> None:
    p = parse_payload(b"")
    assert p.descriptor is None and dict(p.parameters) == {}


def test_byte_arrays_as_numbers_accepted() -> None:
    value = json.dumps({"DecryptConfig": {"Parameters": {"privkeys": [[75, 69, 89]]}}}).encode()
    assert parse_payload(any_bytes(PAYLOAD_URI, value)).parameters["privkeys"] == (b"KEY",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (any_bytes("io.containerd.other.v1.Thing", b"{}"), "payload type: expected 'io.containerd.ocicrypt"),
        (any_bytes(PAYLOAD_URI, b"not json"), "expected JSON"),
        (any_bytes(PAYLOAD_URI, b"[1]"), "expected a JSON object, seen list"),
        (b"\x0a\x50abc", "expected 80 bytes, seen 3"),
        (b"\x0d\x00\x00\x00\x00", "wire type 5"),
        (b"\x0a" * (2 << 20), "expected at most"),
        (
            any_bytes(
                PAYLOAD_URI, json.dumps({"DecryptConfig": {"Parameters": {"privkeys": ["!!"]}}}).encode()
            ),
            "privkeys[0]: expected standard base64",
        ),
        (
            any_bytes(PAYLOAD_URI, json.dumps({"Descriptor": {"digest": "sha256:zz", "size": 1}}).encode()),
            "Descriptor",
        ),
    ],
)
def test_bad_payloads_are_named(data: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match="containerd payload") as info:
        parse_payload(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_type_url_with_prefix_accepted() -> None:
    value = json.dumps({"DecryptConfig": {"Parameters": {"privkeys": [base64.b64encode(b"k").decode()]}}})
    p = parse_payload(any_bytes("types.containerd.io/" + PAYLOAD_URI, value.encode()))
    assert p.parameters["privkeys"] == (b"k",)
