"""Choosing the verifier for a TEE name.

Real TEEs (``snp``, ``tdx``, ``az-snp-vtpm``) verify against the roots shipped in the
package; an operator may add an offline VCEK cache and TDX collateral with
:func:`configure_tee_trust` (the broker does this at start-up from its command line).
``az-snp-vtpm`` and ``az-tdx-vtpm`` (Azure confidential VMs) check their hardware report with
the ``snp`` and ``tdx`` verifiers; ``sgx`` shares the Intel root with ``tdx``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import cast

from layerseal.attest.claims import Verifier
from layerseal.attest.sample import SampleVerifier
from layerseal.attest.sim import SimVerifier
from layerseal.errors import BadInputError

# kbs-types serializes its Tee enum in lowercase: CoCo guests on Azure send "azsnpvtpm"
TEE_ALIASES = {"azsnpvtpm": "az-snp-vtpm", "aztdxvtpm": "az-tdx-vtpm"}
SUPPORTED_TEES = ("sim", "sample", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx", *TEE_ALIASES)

_lock = threading.Lock()
_real: dict[str, Verifier] = {}
_sources: dict[str, str | os.PathLike[str] | None] = {"snp": None, "snp_crl": None, "tdx": None, "sgx": None}


def configure_tee_trust(
    *,
    snp_vcek_cache: str | os.PathLike[str] | None = None,
    snp_crl: str | os.PathLike[str] | None = None,
    tdx_collateral: str | os.PathLike[str] | None = None,
    sgx_collateral: str | os.PathLike[str] | None = None,
) -> None:
    """Set the offline VCEK cache, AMD CRL, TDX and SGX collateral directories (read now, so
    errors show at start)."""
    from layerseal.attest import trust

    verifiers: dict[str, Verifier] = {
        "snp": trust.snp_verifier(snp_vcek_cache, crl_dir=snp_crl),
        "tdx": trust.tdx_verifier(tdx_collateral),
        "sgx": trust.sgx_verifier(sgx_collateral),
    }
    with _lock:
        _sources.update(snp=snp_vcek_cache, snp_crl=snp_crl, tdx=tdx_collateral, sgx=sgx_collateral)
        _real.clear()
        _real.update(verifiers)


def _real_verifier(tee: str) -> Verifier:
    with _lock:
        verifier = _real.get(tee)
    if verifier is not None:
        return verifier
    from layerseal.attest import trust

    made: Verifier
    if tee == "az-snp-vtpm":
        from layerseal.attest.az_snp_vtpm import AzSnpVtpmVerifier
        from layerseal.attest.snp import SnpVerifier

        # shares the process's SNP verifier (its offline VCEK cache and checked chains)
        made = AzSnpVtpmVerifier(cast(SnpVerifier, _real_verifier("snp")))
    elif tee == "az-tdx-vtpm":
        from layerseal.attest.az_tdx_vtpm import AzTdxVtpmVerifier
        from layerseal.attest.tdx import TdxVerifier

        made = AzTdxVtpmVerifier(cast(TdxVerifier, _real_verifier("tdx")))
    elif tee == "snp":
        made = trust.snp_verifier(_sources["snp"], crl_dir=_sources["snp_crl"])
    elif tee == "sgx":
        made = trust.sgx_verifier(_sources.get("sgx"))
    else:
        made = trust.tdx_verifier(_sources["tdx"])
    with _lock:
        # verifiers keep caches of checked certificate chains, so one instance per process
        return _real.setdefault(tee, made)


def verifier_for(tee: str, trusted_sim_platforms: Iterable[bytes] = ()) -> Verifier:
    """The verifier of *tee*; sim trusts exactly the given DER platform certificates."""
    tee = TEE_ALIASES.get(tee, tee)
    if tee == "sim":
        return SimVerifier(trusted_sim_platforms)
    if tee == "sample":
        return SampleVerifier()
    if tee in ("snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx"):
        return _real_verifier(tee)
    raise BadInputError(f"tee: expected one of {list(SUPPORTED_TEES)}, seen {tee[:40]!r}")
