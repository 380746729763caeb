"""The payload containerd passes a stream processor on file descriptor 3 (pure).

containerd marshals a ``google.protobuf.Any`` (field 1 ``type_url``, field 2 ``value``)
and writes it to a pipe given to the processor as fd 3, only when the client set a
payload for the processor's id (imgcrypt's ``WithDecryptedUnpack``; the CRI plugin does
so with ``image_decryption.key_model = "node"``; plain ``ctr`` never does).  imgcrypt
registers its payload as ``io.containerd.ocicrypt.v1.Payload`` and typeurl marshals such
non-protobuf types as JSON: ``{"DecryptConfig":{"Parameters":{name:[b64...]}},
"Descriptor":{OCI descriptor of the encrypted layer}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from layerseal.errors import BadInputError
from layerseal.image.descriptor import Descriptor
from layerseal.keyprovider.pbcodec import decode_varint
from layerseal.keyprovider.protocol import config_parameters
from layerseal.wire.jsonload import loads_object

PAYLOAD_URI = "io.containerd.ocicrypt.v1.Payload"
MAX_PAYLOAD = 1 << 20  # keys and one descriptor: kilobytes; refuse megabytes
#: ocicrypt DecryptConfig parameter names this processor reads
PRIVKEYS = "privkeys"
PRIVKEYS_PASSWORDS = "privkeys-passwords"


@dataclass(frozen=True, repr=False)
class Payload:
    """Decrypt parameters (may hold private keys: never printed) and the layer's descriptor."""

    parameters: Mapping[str, tuple[bytes, ...]] = field(default_factory=lambda: MappingProxyType({}))
    descriptor: Descriptor | None = None

    def __repr__(self) -> str:
        return f"Payload(parameters={sorted(self.parameters)}, descriptor={self.descriptor})"


def _any_fields(data: bytes) -> tuple[str, bytes]:
    """``type_url`` and ``value`` of a marshalled ``google.protobuf.Any``."""
    type_url, value, pos = "", b"", 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = decode_varint(data, pos)
            continue
        if wire != 2:
            raise BadInputError(
                f"containerd payload: expected length-delimited or varint fields, seen wire type {wire}"
            )
        length, pos = decode_varint(data, pos)
        if pos + length > len(data):
            raise BadInputError(
                f"containerd payload field {number}: expected {length} bytes, seen {len(data) - pos}"
            )
        chunk = data[pos : pos + length]
        pos += length
        if number == 1:
            try:
                type_url = chunk.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInputError("containerd payload type_url: expected UTF-8, seen other bytes") from exc
        elif number == 2:
            value = chunk
    return type_url, value


def parse_payload(data: bytes) -> Payload:
    """The payload read from fd 3 (empty input = an empty payload)."""
    if len(data) > MAX_PAYLOAD:
        raise BadInputError(f"containerd payload: expected at most {MAX_PAYLOAD} bytes, seen {len(data)}")
    if not data:
        return Payload()
    type_url, value = _any_fields(data)
    if type_url.rsplit("/", 1)[-1] != PAYLOAD_URI:
        raise BadInputError(f"containerd payload type: expected {PAYLOAD_URI!r}, seen {type_url[:80]!r}")
    doc = loads_object(value, f"containerd payload {PAYLOAD_URI}") if value else {}
    desc_obj = doc.get("Descriptor")
    descriptor = None
    # Go marshals an unset ocispec.Descriptor as zero values: treat one without a digest as absent
    if isinstance(desc_obj, dict) and desc_obj.get("digest"):
        descriptor = Descriptor.from_json(desc_obj, "containerd payload Descriptor")
    return Payload(
        MappingProxyType(
            {}
            if (dc := doc.get("DecryptConfig")) is None
            else config_parameters(dc, "containerd payload DecryptConfig")
        ),
        descriptor,
    )


def encode_payload(parameters: Mapping[str, list[bytes]], descriptor: Mapping[str, Any] | None) -> bytes:
    """The bytes containerd writes for imgcrypt's payload (tests and benchmarks feed fd 3 with it)."""
    import base64

    from layerseal.keyprovider.pbcodec import encode_varint

    doc = {
        "DecryptConfig": {
            "Parameters": {k: [base64.b64encode(v).decode() for v in vs] for k, vs in parameters.items()}
        },
        "Descriptor": dict(descriptor or {}),
    }
    value = json.dumps(doc, separators=(",", ":")).encode()
    url = PAYLOAD_URI.encode()
    return b"\x0a" + encode_varint(len(url)) + url + b"\x12" + encode_varint(len(value)) + value
