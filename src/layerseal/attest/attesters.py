"""Choosing this enclave's evidence producer: ``--tee`` or detection, falling back to ``sim``.

Kept free of HTTP imports: the keyprovider calls it once per layer and starts in ~100 ms.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerseal.attest.claims import Attester
from layerseal.errors import BadInputError

_DEVICES = {"snp": "/dev/sev-guest", "tdx": "/dev/tdx_guest"}


def detect_tee() -> str:
    for tee, device in _DEVICES.items():
        if os.path.exists(device):
            return tee
    return "sim"


def make_attester(
    tee: str | None,
    sim_platform: str | None,
    *,
    where: str = "--sim-platform or LAYERSEAL_SIM_PLATFORM",
) -> Attester:
    """The attester for *tee* (detected when None); *where* says how to name a sim platform."""
    kind = tee or detect_tee()
    if kind == "sim":
        platform = sim_platform or os.environ.get("LAYERSEAL_SIM_PLATFORM")
        if not platform:
            raise BadInputError(
                f"sim TEE: expected a platform directory ({where}), seen none; "
                "create one with 'layerseal tee init --dir DIR'"
            )
        from layerseal.attest.sim_platform import SimAttester

        return SimAttester(Path(platform))
    raise BadInputError(
        f"tee {kind}: expected 'sim' (evidence producers for real {kind} guests are not part of this build)"
    )
