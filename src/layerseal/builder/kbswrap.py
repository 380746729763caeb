"""The ``kbs:`` recipient: each layer gets its own key, created by the key broker.

For every layer it encrypts, the builder sends the layer's private options to the
broker, which creates a fresh per-layer KEK, keeps it, and answers with a Confidential
Containers key packet (``provider.attestation-agent``) sealing those options under the
KEK.  The KEK never leaves the broker except to an attested enclave.
"""

from __future__ import annotations

from layerseal.crypto.keywrap import PROVIDER_NAME, LayerContext
from layerseal.image.encryption import PrivateOptions
from layerseal.kbs.client import PublisherClient
from layerseal.wire.b64 import b64decode

#: the annotation suffix Confidential Containers guests look for
SCHEME = f"provider.{PROVIDER_NAME}"


class KbsWrapper:
    """Asks the broker for a new key per layer of *repository*; returns its key packet."""

    scheme = SCHEME

    def __init__(self, client: PublisherClient, repository: str, tenant: str | None = None) -> None:
        self.client = client
        self.repository = repository
        self.tenant = tenant
        #: kids created by this wrapper, so a failed publish can mark them unused
        self.created: list[str] = []

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes:
        answer = self.client.create_layer_key_detailed(
            self.repository, str(layer.descriptor.digest), opts.to_json_bytes(), tenant=self.tenant
        )
        key = answer.get("key") or {}
        key_id = key.get("key_id") if isinstance(key, dict) else None
        if isinstance(key_id, str):
            self.created.append(key_id)
        return b64decode(answer["packet"], "broker POST /api/v1/keys packet")

    def mark_unused(self) -> list[str]:
        """After a failed publish: flag every key this wrapper created as unused (cleanable)."""
        marked = []
        for key_id in self.created:
            self.client.mark_unused(key_id, True)
            marked.append(key_id)
        return marked
