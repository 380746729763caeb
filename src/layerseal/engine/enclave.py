"""The enclave's identity: an ephemeral key pair (private key only in memory) and an attester.

``--tee`` picks the attester; by default the TEE is detected from the guest devices
and falls back to the simulated TEE (``sim``), whose platform directory comes from
``--sim-platform`` or ``LAYERSEAL_SIM_PLATFORM``.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerseal.attest.claims import Attester
from layerseal.attest.sim_platform import SimAttester
from layerseal.broker.client import EnclaveClient
from layerseal.crypto.keys import generate_key
from layerseal.errors import BadInputError

_DEVICES = {"snp": "/dev/sev-guest", "tdx": "/dev/tdx_guest"}


def detect_tee() -> str:
    for tee, device in _DEVICES.items():
        if os.path.exists(device):
            return tee
    return "sim"


def make_attester(tee: str | None, sim_platform: str | None) -> Attester:
    kind = tee or detect_tee()
    if kind == "sim":
        platform = sim_platform or os.environ.get("LAYERSEAL_SIM_PLATFORM")
        if not platform:
            raise BadInputError(
                "sim TEE: expected a platform directory (--sim-platform or LAYERSEAL_SIM_PLATFORM), "
                "seen none; create one with 'layerseal tee init --dir DIR'"
            )
        return SimAttester(Path(platform))
    raise BadInputError(
        f"--tee {kind}: expected 'sim' (evidence producers for real {kind} guests are not part of this build)"
    )


def enclave_client(url: str, attester: Attester, cacert: str | None = None) -> EnclaveClient:
    """An RCAR client with a fresh enclave key pair that never leaves this process."""
    return EnclaveClient(url, attester, generate_key("EC-P256"), verify=cacert or True)
