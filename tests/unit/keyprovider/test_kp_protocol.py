"""Keyprovider JSON: captured skopeo requests, byte fields as base64 or number arrays, reply shapes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from layerseal.errors import BadInputError
from layerseal.keyprovider.protocol import (
    UnwrapRequest,
    WrapRequest,
    byte_field,
    parse_reply,
    parse_request,
    provider_parameter,
    unwrap_reply,
    wrap_reply,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "keyprovider"


def capture(name: str) -> bytes:
    return (DATA / f"skopeo-1.14-{name}-request.json").read_bytes()


def test_captured_keywrap_request() -> None:
    req = parse_request(capture("keywrap"))
    assert isinstance(req, WrapRequest)
    assert req.parameters == {"myprov": (b"Enabled",)}
    assert json.loads(req.optsdata)["digest"].startswith("sha256:df40d1bf")
    assert "symkey" not in repr(req) and "redacted" in repr(req)


def test_captured_keyunwrap_request() -> None:
    req = parse_request(capture("keyunwrap"))
    assert isinstance(req, UnwrapRequest)
    assert req.parameters == {"myprov": (b"Enabled",)}
    assert json.loads(req.annotation)["kp"] == "myprov"


def test_number_arrays_are_accepted_like_base64() -> None:
    doc = json.loads(capture("keyunwrap"))
    annotation = base64.b64decode(doc["keyunwrapparams"]["annotation"])
    doc["keyunwrapparams"]["annotation"] = list(annotation)
    doc["keyunwrapparams"]["dc"]["Parameters"]["myprov"] = [list(b"kbs=http://b:1")]
    req = parse_request(json.dumps(doc).encode())
    assert isinstance(req, UnwrapRequest)
    assert req.annotation == annotation
    assert req.parameters["myprov"] == (b"kbs=http://b:1",)


def test_wrap_with_number_array_optsdata() -> None:
    doc = json.loads(capture("keywrap"))
    raw = base64.b64decode(doc["keywrapparams"]["optsdata"])
    doc["keywrapparams"]["optsdata"] = list(raw)
    req = parse_request(json.dumps(doc).encode())
    assert isinstance(req, WrapRequest) and req.optsdata == raw


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("not base64!", "invalid base64"),
        ([1, 2, 256], "element '256'"),
        ([1, -1], "element '-1'"),
        ([1, True], "element 'True'"),
        ([1.5], "element '1.5'"),
        (12, "seen int"),
        (None, "seen null"),
    ],
)
def test_bad_byte_fields(value: object, needle: str) -> None:
    with pytest.raises(BadInputError, match=r"x\.y") as info:
        byte_field(value, "x.y")
    assert needle in str(info.value)


def test_empty_byte_array_and_string() -> None:
    assert byte_field([], "f") == b""
    assert byte_field("", "f") == b""


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{oops", "expected one JSON object, seen invalid JSON"),
        (b"[]", "expected a JSON object, seen list"),
        (b'{"op":"keyrotate"}', "expected 'keywrap' or 'keyunwrap', seen 'keyrotate'"),
        (b"{}", "seen 'null'"),
        (b'{"op":"keywrap","keywrapparams":null}', "keywrapparams: expected a JSON object, seen null"),
        (b'{"op":"keywrap","keywrapparams":{"optsdata":null}}', "keywrapparams.optsdata: expected"),
        (b'{"op":"keyunwrap","keyunwrapparams":{"dc":null,"annotation":null}}', "annotation: expected"),
        (
            b'{"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"p":"x"}},"annotation":"eA=="}}',
            "keyunwrapparams.dc.Parameters.p: expected an array",
        ),
        (b'{"op":"keywrap","keywrapparams":{"optsdata":"%%%"}}', "keywrapparams.optsdata"),
    ],
)
def test_malformed_requests(raw: bytes, needle: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_request(raw)
    assert needle in str(info.value)


def test_oversized_request_refused() -> None:
    with pytest.raises(BadInputError, match="at most"):
        parse_request(b" " * (2 << 20))


def test_null_parameters_and_configs() -> None:
    req = parse_request(b'{"op":"keyunwrap","keyunwrapparams":{"dc":null,"annotation":"eA=="}}')
    assert isinstance(req, UnwrapRequest) and req.parameters == {} and req.annotation == b"x"
    req = parse_request(
        b'{"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"p":null}},"annotation":"eA=="}}'
    )
    assert req.parameters == {"p": ()}


def test_provider_parameter_selection() -> None:
    params = {"layerseal": (b"kbs=http://b",), "pubkeys": (b"xx",)}
    assert provider_parameter(params, "layerseal") == "kbs=http://b"
    assert provider_parameter(params, "other") is None
    assert provider_parameter({"layerseal": ()}, "layerseal") is None
    assert provider_parameter({"l": (b"a", b"a")}, "l") == "a"
    with pytest.raises(BadInputError, match="expected one parameter string, seen 2"):
        provider_parameter({"l": (b"a", b"b")}, "l")
    with pytest.raises(BadInputError, match="UTF-8"):
        provider_parameter({"l": (b"\xff",)}, "l")


def test_reply_shapes_are_exact() -> None:
    assert wrap_reply(b"\x00\x01pkt") == b'{"keywrapresults":{"annotation":"AAFwa3Q="}}'
    assert unwrap_reply(b"{}") == b'{"keyunwrapresults":{"optsdata":[123,125]}}'
    assert wrap_reply(b"\x00\x01", "array") == b'{"keywrapresults":{"annotation":[0,1]}}'
    assert unwrap_reply(b"{}", "base64") == b'{"keyunwrapresults":{"optsdata":"e30="}}'
    assert parse_reply(wrap_reply(b"abc"), "keywrap") == b"abc"
    assert parse_reply(unwrap_reply(b"abc"), "keyunwrap") == b"abc"
    with pytest.raises(BadInputError, match="keyunwrapresults"):
        parse_reply(wrap_reply(b"abc"), "keyunwrap")


# ocicrypt-rs (guest-components ocicrypt-rs/src/keywrap/keyprovider/mod.rs) serializes
# KeyWrapParams.opts_data as a String (the JSON text), KeyUnwrapParams.annotation as base64,
# the configs' Parameters as base64 strings, and reads KeyWrapResults.annotation /
# KeyUnwrapResults.opts_data as Vec<u8>.
RS_OPTS = b'{"symkey":"AAAA","digest":"sha256:' + b"ab" * 32 + b'","cipheroptions":{"nonce":"BBBB"}}'


def ocicrypt_rs_wrap_request(name: str = "attestation-agent") -> bytes:
    ec = {"Parameters": {name: [base64.b64encode(b"Enabled").decode()]}, "DecryptConfig": {"Parameters": {}}}
    return json.dumps(
        {
            "op": "keywrap",
            "keywrapparams": {"ec": ec, "optsdata": RS_OPTS.decode()},
            "keyunwrapparams": {"dc": None, "annotation": None},
        }
    ).encode()


def serde_vec_u8(value: object) -> bytes:
    """What serde_json accepts for a ``Vec<u8>``: an array of integers 0..255, nothing else."""
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v <= 255 for v in value):
        raise TypeError(f"invalid type: expected a sequence, seen {type(value).__name__}")
    return bytes(value)


def test_ocicrypt_rs_keywrap_request_with_json_text_optsdata() -> None:
    req = parse_request(ocicrypt_rs_wrap_request())
    assert isinstance(req, WrapRequest)
    assert req.optsdata == RS_OPTS
    assert req.parameters == {"attestation-agent": (b"Enabled",)}
    assert req.reply_form == "array"
    reply = json.loads(wrap_reply(b"packet", req.reply_form))
    assert serde_vec_u8(reply["keywrapresults"]["annotation"]) == b"packet"


def test_go_keywrap_request_gets_base64_as_go_marshals_it() -> None:
    req = parse_request(capture("keywrap"))
    assert isinstance(req, WrapRequest) and req.reply_form == "base64"
    with pytest.raises(TypeError):
        serde_vec_u8(json.loads(wrap_reply(b"p", req.reply_form))["keywrapresults"]["annotation"])


def test_unwrap_reply_is_read_by_serde_as_vec_u8() -> None:
    reply = json.loads(unwrap_reply(RS_OPTS))
    assert serde_vec_u8(reply["keyunwrapresults"]["optsdata"]) == RS_OPTS


def test_json_text_optsdata_that_is_not_json_is_refused_by_the_provider_later() -> None:
    doc = json.loads(ocicrypt_rs_wrap_request())
    doc["keywrapparams"]["optsdata"] = "{not json"
    req = parse_request(json.dumps(doc).encode())
    assert isinstance(req, WrapRequest) and req.optsdata == b"{not json"
    from layerseal.keyprovider.provider import layer_digest

    with pytest.raises(BadInputError, match="expected ocicrypt private options JSON"):
        layer_digest(req.optsdata)
