"""Choosing the verifier for a TEE name."""

from __future__ import annotations

from collections.abc import Iterable

from layerseal.attest.claims import Verifier
from layerseal.attest.sample import SampleVerifier
from layerseal.attest.sim import SimVerifier
from layerseal.errors import BadInputError

SUPPORTED_TEES = ("sim", "sample")


def verifier_for(tee: str, trusted_sim_platforms: Iterable[bytes] = ()) -> Verifier:
    """The verifier of *tee*; sim trusts exactly the given DER platform certificates."""
    if tee == "sim":
        return SimVerifier(trusted_sim_platforms)
    if tee == "sample":
        return SampleVerifier()
    raise BadInputError(f"tee: expected one of {list(SUPPORTED_TEES)}, seen {tee[:40]!r}")
