"""Confidential Containers key packets and the kid scheme (SPEC section 4).

A packet is ``{"kid","wrapped_data","iv","wrap_type":"A256GCM"}``: the layer's private
options sealed with AES-256-GCM (no AAD) under the layer's KEK.  Packets made by CoCo's
tools are opened too (guest-components CDH ``AnnotationPacket`` v1 and v2): any
``kbs:///<repo>/<type>/<tag>`` kid, ``wrap_type`` ``A256CTR`` (16-byte IV, no tag: what it
opens to must be JSON), and the v2 members ``version`` (``0.1.0``), ``provider``
(``kbs``), ``provider_settings``, ``annotations``.

kid scheme: ``kbs:///<tenant>/layer-key/<key-id>.<version>``.  The KBS resource path
``<repo>/<type>/<tag>`` is ``<tenant>/layer-key/<key-id>.<version>``: repo names the
tenant, type is fixed, and the tag names one version of one key; ``<key-id>`` alone means
the key's newest active version.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from layerseal.errors import BadInputError, IntegrityError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object, object_or_none

RESOURCE_TYPE = "layer-key"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
KEY_ID_RE = re.compile(r"^k[a-z2-7]{26}$")
_TAG_RE = re.compile(r"^(k[a-z2-7]{26})(?:\.([1-9][0-9]{0,8}))?$")


def check_tenant(tenant: Any) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        shown = str(tenant)[:70]
        raise BadInputError(f"tenant: expected lowercase [a-z0-9-], 1-63 chars, seen {shown!r}")
    return tenant


def new_key_id() -> str:
    return "k" + base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()


@dataclass(frozen=True)
class ResourcePath:
    """A KBS resource path naming a layer key (version None = newest active)."""

    tenant: str
    key_id: str
    version: int | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        if not KEY_ID_RE.match(self.key_id):
            raise BadInputError(f"key id: expected 'k' + 26 base32 chars, seen {self.key_id[:40]!r}")

    @classmethod
    def parse(cls, text: Any) -> ResourcePath:
        if not isinstance(text, str):
            raise BadInputError(f"resource path: expected a string, seen {type(text).__name__}")
        path = text
        if text.startswith("kbs://"):
            # kbs://<host>/repo/type/tag: the host part is ignored
            rest = text[len("kbs://") :]
            path = rest.partition("/")[2]
        parts = path.split("/")
        if len(parts) != 3:
            raise BadInputError(
                f"resource path: expected '<tenant>/{RESOURCE_TYPE}/<key-id>', seen {text[:120]!r}"
            )
        tenant, kind, tag = parts
        if kind != RESOURCE_TYPE:
            raise BadInputError(f"resource type: expected {RESOURCE_TYPE!r}, seen {kind[:40]!r}")
        m = _TAG_RE.match(tag)
        if m is None:
            raise BadInputError(f"resource tag: expected '<key-id>[.<version>]', seen {tag[:60]!r}")
        return cls(check_tenant(tenant), m.group(1), int(m.group(2)) if m.group(2) else None)

    def __str__(self) -> str:
        tag = self.key_id if self.version is None else f"{self.key_id}.{self.version}"
        return f"{self.tenant}/{RESOURCE_TYPE}/{tag}"

    @property
    def kid(self) -> str:
        return f"kbs:///{self}"


def _b64(value: Any, what: str, length: int | None = None) -> bytes:
    return b64decode(value, f"key packet {what}", length)


def make_key_packet(kid: str, kek: bytes, optsdata: bytes) -> bytes:
    """The packet JSON bytes sealing *optsdata* under *kek*."""
    iv = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(iv, optsdata, None)
    packet = {
        "kid": kid,
        "wrapped_data": base64.b64encode(wrapped).decode(),
        "iv": base64.b64encode(iv).decode(),
        "wrap_type": "A256GCM",
    }
    return json.dumps(packet, separators=(",", ":")).encode()


WRAP_TYPES = {"A256GCM": 12, "A256CTR": 16}  # wrap_type -> IV size (CDH's crypto::WrapType)
PACKET_VERSION = "0.1.0"


@dataclass(frozen=True)
class KeyPacket:
    kid: str
    wrapped_data: bytes
    iv: bytes
    wrap_type: str = "A256GCM"

    @classmethod
    def parse(cls, packet_json: bytes) -> KeyPacket:
        obj = loads_object(packet_json, "key packet")
        # v2 packets (CDH AnnotationPacketV2) name a version and a provider; only the KBS one is ours
        version = obj.get("version", PACKET_VERSION)
        if version != PACKET_VERSION:
            raise BadInputError(
                f"key packet version: expected {PACKET_VERSION!r}, seen {str(version)[:20]!r}"
            )
        provider = obj.get("provider", "kbs")
        if provider != "kbs":
            raise BadInputError(
                f"key packet provider: expected 'kbs' (a KBS resource), seen {str(provider)[:30]!r}"
            )
        wrap_type = obj.get("wrap_type")
        if wrap_type not in WRAP_TYPES:
            shown = str(wrap_type)[:20]
            raise BadInputError(f"key packet wrap_type: expected 'A256GCM' or 'A256CTR', seen {shown!r}")
        kid = obj.get("kid")
        if not isinstance(kid, str):
            raise BadInputError("key packet kid: expected a string")
        iv = _b64(obj.get("iv"), "iv", WRAP_TYPES[wrap_type])
        return cls(kid, _b64(obj.get("wrapped_data"), "wrapped_data"), iv, wrap_type)

    @property
    def resource(self) -> ResourcePath:
        return ResourcePath.parse(self.kid)


def unwrap_key_packet(packet_json: bytes, kek: bytes) -> bytes:
    """The optsdata inside a packet, given the KEK released for its kid."""
    packet = KeyPacket.parse(packet_json)
    if len(kek) != 32:
        raise BadInputError(f"KEK: expected 32 bytes, seen {len(kek)}")
    if packet.wrap_type == "A256CTR":
        decryptor = Cipher(algorithms.AES(kek), modes.CTR(packet.iv)).decryptor()
        plain = decryptor.update(packet.wrapped_data) + decryptor.finalize()
        # CTR has no tag: a wrong KEK shows only as bytes that are not the JSON optsdata
        if object_or_none(plain) is None:
            raise IntegrityError(
                f"key packet {packet.kid}: expected A256CTR to open to JSON optsdata with its KEK, "
                "seen other bytes"
            )
        return plain
    try:
        return AESGCM(kek).decrypt(packet.iv, packet.wrapped_data, None)
    except InvalidTag as exc:
        raise IntegrityError(
            f"key packet {packet.kid}: expected to open with its KEK, seen a mismatch"
        ) from exc
