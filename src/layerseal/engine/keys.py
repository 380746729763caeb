"""Layer keys inside the enclave: find every key packet first, fetch all KEKs in one batch.

``BrokerUnwrapper`` opens broker key packets (``provider.attestation-agent``, or
``provider.layerseal`` from the keyprovider's earlier default name): ``prefetch()`` collects
the kids of every encrypted layer of a manifest and asks the broker for all of them in
one attested request; ``unwrap()`` then opens each packet locally.  A key the broker
refuses is recorded per kid, so the pull can name every refused layer at once.

Packets made by CoCo's tools open too (any ``kbs:///<repo>/<type>/<tag>`` kid, v1/v2
packets, ``A256GCM`` or ``A256CTR``), and the client falls back to one
``GET /kbs/v0/resource/...`` per key on a Trustee KBS (see :mod:`layerseal.kbs.client`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from layerseal.crypto.keywrap import BROKER_SCHEMES, LayerContext
from layerseal.errors import BadInputError, DeniedError, NotFoundError
from layerseal.image import jsonutil
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.encryption import wrapped_keys

if TYPE_CHECKING:
    # the HTTP client is the caller's to build: a pull of plain or jwe layers never imports it
    from layerseal.kbs.client import EnclaveClient

SCHEMES = BROKER_SCHEMES


def packet_kid(blob: bytes, what: str) -> str:
    try:
        kid = jsonutil.loads(blob, what).get("kid")
    except (ValueError, AttributeError) as exc:
        raise BadInputError(f"{what}: expected a key packet (JSON with 'kid'), seen invalid data") from exc
    if not isinstance(kid, str) or not kid:
        raise BadInputError(f"{what}: expected a key packet with a 'kid' string, seen none")
    return kid


def layer_kids(layers: Sequence[Descriptor]) -> dict[int, list[str]]:
    """Kids named by each encrypted layer's broker key packets, by layer position."""
    out: dict[int, list[str]] = {}
    for i, d in enumerate(layers):
        if not mt.is_encrypted(d.media_type):
            continue
        found = wrapped_keys(d.annotations)
        blobs = [b for scheme in SCHEMES for b in found.get(scheme, [])]
        kids = [packet_kid(b, f"layer {i} ({d.digest}) key packet") for b in blobs]
        if kids:
            out[i] = kids
    return out


class BrokerUnwrapper:
    """Unwraps broker key packets with KEKs released in one batch to this enclave."""

    def __init__(self, client: EnclaveClient) -> None:
        self.client = client
        self.keks: dict[str, bytes] = {}
        self.refused: dict[str, str] = {}

    def prefetch(self, layers: Sequence[Descriptor], what: str = "image") -> int:
        """Fetch the KEKs of every encrypted layer in one request; returns how many were released.

        When the broker refuses the batch, each key is asked for alone so that the
        error can name every refused layer (and only those).
        """
        kids = sorted({k for ks in layer_kids(layers).values() for k in ks})
        if not kids:
            return 0
        try:
            self.keks.update(self.client.get_keys(kids))
        except (DeniedError, NotFoundError):
            for kid in kids:
                try:
                    self.keks.update(self.client.get_keys([kid]))
                except (DeniedError, NotFoundError) as exc:
                    self.refused[kid] = str(exc)
        return len(self.keks)

    def handles(self, scheme: str) -> bool:
        return scheme in SCHEMES

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None:
        kid = packet_kid(blob, f"{layer} key packet")
        if kid in self.refused:
            raise DeniedError(f"broker refused {kid}: {self.refused[kid]}")
        kek = self.keks.get(kid)
        if kek is None:
            kek = self.client.get_keys([kid])[kid]
            self.keks[kid] = kek
        from layerseal.kbs.packets import unwrap_key_packet

        return unwrap_key_packet(blob, kek)
