"""The ocicrypt keyprovider JSON messages (SPEC section 3), parsed and built without I/O.

Two clients send them, differently (read from their sources):

* Go ocicrypt (skopeo, podman, buildah, CRI-O, imgcrypt) marshals every ``[]byte`` as
  standard base64: ``optsdata``, ``annotation``, ``Parameters`` values; it reads the
  reply's ``[]byte`` from base64 text *or* from an array of numbers (encoding/json
  accepts both).
* ocicrypt-rs (Confidential Containers image-rs: cmd, gRPC and ttrpc keyproviders) sends
  keywrap ``optsdata`` as the private options' JSON *text*, ``annotation`` and
  ``Parameters`` as base64, and reads the reply's ``annotation``/``optsdata`` as
  ``Vec<u8>``, which serde_json takes only from an array of numbers.

Requests: every byte field may be base64, an array of numbers, or (keywrap ``optsdata``)
JSON text.  Replies: keyunwrap ``optsdata`` is an array of numbers (the one form both
clients read, and the requests cannot tell them apart); keywrap ``annotation`` follows
the request: base64 for a Go request, an array for an ocicrypt-rs one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerseal.errors import BadInputError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads

OP_WRAP = "keywrap"
OP_UNWRAP = "keyunwrap"
#: how a reply carries bytes: base64 text (Go's own form) or an array of numbers (serde's)
FORM_BASE64 = "base64"
FORM_ARRAY = "array"
MAX_REQUEST = 1 << 20  # optsdata and packets are a few hundred bytes; refuse megabytes of junk


@dataclass(frozen=True, repr=False)
class WrapRequest:
    """``keywrap``: wrap *optsdata* (secret); *parameters* are ``ec.Parameters``."""

    parameters: Mapping[str, tuple[bytes, ...]]
    optsdata: bytes
    #: the reply form this client reads: FORM_ARRAY when optsdata came as JSON text or numbers
    reply_form: str = FORM_BASE64

    def __repr__(self) -> str:  # optsdata holds the layer key
        return f"WrapRequest(parameters={sorted(self.parameters)}, optsdata=<redacted>)"


@dataclass(frozen=True)
class UnwrapRequest:
    """``keyunwrap``: open *annotation* (the wrapped blob); *parameters* are ``dc.Parameters``."""

    parameters: Mapping[str, tuple[bytes, ...]]
    annotation: bytes


Request = WrapRequest | UnwrapRequest


def byte_field(value: Any, what: str) -> bytes:
    """A JSON byte field: standard base64 text, or an array of numbers 0..255."""
    if isinstance(value, str):
        return b64decode(value, what, expected="standard base64 or an array of bytes")
    if isinstance(value, list):
        if not all(type(v) is int and 0 <= v <= 255 for v in value):
            bad = next(v for v in value if not (type(v) is int and 0 <= v <= 255))
            raise BadInputError(
                f"{what}: expected an array of numbers 0..255, seen element {str(bad)[:20]!r}"
            )
        return bytes(value)
    raise BadInputError(f"{what}: expected base64 text or an array of bytes, seen {_kind(value)}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInputError(f"{what}: expected a JSON object, seen {_kind(value)}")
    return value


def config_parameters(config: Any, what: str) -> dict[str, tuple[bytes, ...]]:
    """``{"Parameters": {name: [bytes...]}}`` of an EncryptConfig or DecryptConfig."""
    obj = _object(config, what)
    params = obj.get("Parameters")
    if params is None:
        return {}
    out: dict[str, tuple[bytes, ...]] = {}
    for name, values in _object(params, f"{what}.Parameters").items():
        where = f"{what}.Parameters.{name[:40]}"
        if values is None:
            out[name] = ()
        elif isinstance(values, list):
            out[name] = tuple(byte_field(v, f"{where}[{i}]") for i, v in enumerate(values))
        else:
            raise BadInputError(f"{where}: expected an array of byte strings, seen {_kind(values)}")
    return out


def parse_request(data: bytes) -> Request:
    """The request ocicrypt wrote to stdin (or carried in the gRPC message)."""
    if len(data) > MAX_REQUEST:
        raise BadInputError(f"keyprovider request: expected at most {MAX_REQUEST} bytes, seen {len(data)}")
    doc = loads(data, f"keyprovider request ({len(data)} bytes)", expected="one JSON object")
    obj = _object(doc, "keyprovider request")
    op = obj.get("op")
    if op == OP_WRAP:
        params = _object(obj.get("keywrapparams"), "keywrapparams")
        if params.get("optsdata") is None:
            raise BadInputError("keywrapparams.optsdata: expected the private options, seen null")
        ec = params.get("ec")
        optsdata = params["optsdata"]
        if isinstance(optsdata, str) and optsdata.lstrip().startswith("{"):
            # ocicrypt-rs: the private options' JSON text itself ('{' is not base64)
            return WrapRequest(
                parameters=config_parameters(ec, "keywrapparams.ec") if ec is not None else {},
                optsdata=optsdata.encode("utf-8"),
                reply_form=FORM_ARRAY,
            )
        return WrapRequest(
            parameters=config_parameters(ec, "keywrapparams.ec") if ec is not None else {},
            optsdata=byte_field(optsdata, "keywrapparams.optsdata"),
            reply_form=FORM_ARRAY if isinstance(optsdata, list) else FORM_BASE64,
        )
    if op == OP_UNWRAP:
        params = _object(obj.get("keyunwrapparams"), "keyunwrapparams")
        if params.get("annotation") is None:
            raise BadInputError("keyunwrapparams.annotation: expected the wrapped key, seen null")
        dc = params.get("dc")
        return UnwrapRequest(
            parameters=config_parameters(dc, "keyunwrapparams.dc") if dc is not None else {},
            annotation=byte_field(params["annotation"], "keyunwrapparams.annotation"),
        )
    shown = str(op)[:40] if isinstance(op, str) else _kind(op)
    raise BadInputError(f"keyprovider request op: expected {OP_WRAP!r} or {OP_UNWRAP!r}, seen {shown!r}")


def provider_parameter(parameters: Mapping[str, tuple[bytes, ...]], name: str) -> str | None:
    """The REST text given as ``provider:NAME:REST`` (None when NAME has no parameter)."""
    values = parameters.get(name)
    if not values:
        return None
    distinct = set(values)
    if len(distinct) > 1:
        raise BadInputError(
            f"provider:{name}: expected one parameter string, seen {len(distinct)} different ones "
            f"(give provider:{name}:... once)"
        )
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"provider:{name} parameter: expected UTF-8 text, seen other bytes") from exc


def _encode(data: bytes, form: str) -> str | list[int]:
    if form == FORM_BASE64:
        return base64.b64encode(data).decode("ascii")
    if form == FORM_ARRAY:
        return list(data)
    raise BadInputError(f"keyprovider reply form: expected {FORM_BASE64!r} or {FORM_ARRAY!r}, seen {form!r}")


def wrap_reply(annotation: bytes, form: str = FORM_BASE64) -> bytes:
    """``{"keywrapresults":{"annotation":...}}``: ocicrypt stores base64 of *annotation*."""
    body = {"keywrapresults": {"annotation": _encode(annotation, form)}}
    return json.dumps(body, separators=(",", ":")).encode()


def unwrap_reply(optsdata: bytes, form: str = FORM_ARRAY) -> bytes:
    """``{"keyunwrapresults":{"optsdata":[...]}}`` (numbers: read by Go and by ocicrypt-rs)."""
    body = {"keyunwrapresults": {"optsdata": _encode(optsdata, form)}}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_reply(data: bytes, op: str) -> bytes:
    """The byte payload of a reply (what ocicrypt reads back); used by tests and the benchmark."""
    doc = loads(data, "keyprovider reply")
    section, field = ("keywrapresults", "annotation") if op == OP_WRAP else ("keyunwrapresults", "optsdata")
    inner = _object(_object(doc, "keyprovider reply").get(section), section)
    return byte_field(inner.get(field), f"{section}.{field}")
