"""The enclave's identity: an ephemeral key pair (private key only in memory) and an attester.

``--tee`` picks the attester; by default the TEE is detected from the guest devices
and falls back to the simulated TEE (``sim``), whose platform directory comes from
``--sim-platform`` or ``LAYERSEAL_SIM_PLATFORM``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerseal.attest.attesters import detect_tee, make_attester

if TYPE_CHECKING:
    from layerseal.attest.claims import Attester
    from layerseal.kbs.client import EnclaveClient

__all__ = ["detect_tee", "enclave_client", "make_attester"]


def enclave_client(url: str, attester: Attester, cacert: str | None = None) -> EnclaveClient:
    """An RCAR client with a fresh enclave key pair that never leaves this process."""
    # the HTTP client and key generation load only when a broker is asked (start-up time)
    from layerseal.crypto.keys import generate_key
    from layerseal.kbs.client import EnclaveClient

    return EnclaveClient(url, attester, generate_key("EC-P256"), verify=cacert or True)
