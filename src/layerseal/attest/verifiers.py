"""Choosing the verifier for a TEE name.

Real TEEs (``snp``, ``tdx``, ``az-snp-vtpm``) verify against the roots shipped in the
package; an operator may add an offline VCEK cache, AMD CRLs and TDX/SGX collateral
(:class:`TeeTrust`), held by one :class:`TeeVerifiers` per broker.
``az-snp-vtpm`` and ``az-tdx-vtpm`` (Azure confidential VMs) check their hardware report with
the ``snp`` and ``tdx`` verifiers; ``sgx`` shares the Intel root with ``tdx``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from layerseal.attest.claims import Verifier
from layerseal.attest.sample import SampleVerifier
from layerseal.attest.sim import SimVerifier
from layerseal.errors import BadInputError

# kbs-types serializes its Tee enum in lowercase: CoCo guests on Azure send "azsnpvtpm"
TEE_ALIASES = {"azsnpvtpm": "az-snp-vtpm", "aztdxvtpm": "az-tdx-vtpm"}
SUPPORTED_TEES = ("sim", "sample", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx", *TEE_ALIASES)


@dataclass(frozen=True)
class TeeTrust:
    """Trust material beyond the roots shipped in the package (directories, all optional)."""

    snp_vcek_cache: str | os.PathLike[str] | None = None
    snp_crl: str | os.PathLike[str] | None = None
    tdx_collateral: str | os.PathLike[str] | None = None
    sgx_collateral: str | os.PathLike[str] | None = None


class TeeVerifiers:
    """The real-TEE verifiers of one broker, over its :class:`TeeTrust`.

    Configured material is read at construction, so errors show at start; verifiers keep
    caches of checked certificate chains, so each is made once per instance (lazily for
    kinds nothing configured).  Thread-safe.
    """

    def __init__(self, trust: TeeTrust = TeeTrust()) -> None:
        self.trust = trust
        self._lock = threading.Lock()
        self._made: dict[str, Verifier] = {}
        if trust != TeeTrust():
            for tee in ("snp", "tdx", "sgx"):
                self._made[tee] = self._make(tee)

    def _make(self, tee: str) -> Verifier:
        from layerseal.attest import trust

        if tee == "az-snp-vtpm":
            from layerseal.attest.az_snp_vtpm import AzSnpVtpmVerifier
            from layerseal.attest.snp import SnpVerifier

            # shares this instance's SNP verifier (its offline VCEK cache and checked chains)
            return AzSnpVtpmVerifier(cast(SnpVerifier, self.real("snp")))
        if tee == "az-tdx-vtpm":
            from layerseal.attest.az_tdx_vtpm import AzTdxVtpmVerifier
            from layerseal.attest.tdx import TdxVerifier

            return AzTdxVtpmVerifier(cast(TdxVerifier, self.real("tdx")))
        if tee == "snp":
            return trust.snp_verifier(self.trust.snp_vcek_cache, crl_dir=self.trust.snp_crl)
        if tee == "sgx":
            return trust.sgx_verifier(self.trust.sgx_collateral)
        return trust.tdx_verifier(self.trust.tdx_collateral)

    def real(self, tee: str) -> Verifier:
        """The verifier of a real TEE kind (``snp``, ``tdx``, ``sgx``, ``az-*-vtpm``)."""
        with self._lock:
            made = self._made.get(tee)
        if made is not None:
            return made
        made = self._make(tee)
        with self._lock:
            return self._made.setdefault(tee, made)

    def verifier_for(self, tee: str, trusted_sim_platforms: Iterable[bytes] = ()) -> Verifier:
        """The verifier of *tee*; sim trusts exactly the given DER platform certificates."""
        tee = TEE_ALIASES.get(tee, tee)
        if tee == "sim":
            return SimVerifier(trusted_sim_platforms)
        if tee == "sample":
            return SampleVerifier()
        if tee in ("snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx"):
            return self.real(tee)
        raise BadInputError(f"tee: expected one of {list(SUPPORTED_TEES)}, seen {tee[:40]!r}")


# Callers that hold no TeeVerifiers of their own (tools, tests) share this one: it has no
# trust material beyond the packaged roots and is never reconfigured; a broker builds its own.
_PACKAGED = TeeVerifiers()


def verifier_for(
    tee: str, trusted_sim_platforms: Iterable[bytes] = (), verifiers: TeeVerifiers | None = None
) -> Verifier:
    """The verifier of *tee* from *verifiers* (default: the packaged roots only); sim trusts
    exactly the given DER platform certificates."""
    return (verifiers or _PACKAGED).verifier_for(tee, trusted_sim_platforms)
