"""The thin I/O layer of the real-TEE verifiers: shipped roots, VCEK cache, TDX collateral.

AMD's ARK/ASK/ASVK per processor generation and the Intel SGX Root CA ship inside the
package (``layerseal/attest/data``); the Intel root is checked against its well-known
SHA-256 so a tampered package fails loudly.  Operators may add an offline VCEK cache
directory (``*.der``/``*.pem``/``*.crt``) and a TDX collateral directory; nothing here
touches the network.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from layerseal.attest import dcap, sgx, snp, tdx
from layerseal.attest.x509util import Clock, fingerprint, load_cert, load_pem_certs, utc_now
from layerseal.errors import BadInputError, IntegrityError, NotFoundError

INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
_MAX_CACHE_FILES = 4096
_MAX_CERT_BYTES = 64 * 1024


def _data(name: str) -> bytes:
    return resources.files("layerseal.attest").joinpath("data", name).read_bytes()


@functools.cache
def shipped_amd_chains() -> tuple[snp.AmdChain, ...]:
    """AMD's pinned chains for Milan, Genoa and Turin (parsed and link-checked once)."""
    return tuple(snp.parse_amd_chain(gen, _data(f"{gen}_ask_ark_asvk.pem")) for gen in snp.GENERATIONS)


@functools.cache
def shipped_intel_root() -> bytes:
    """DER of the Intel SGX Root CA, checked against its pinned SHA-256."""
    cert = load_cert(_data("intel_sgx_root_ca.pem"), "shipped Intel SGX Root CA")
    seen = fingerprint(cert)
    if seen != "sha256:" + INTEL_SGX_ROOT_CA_SHA256:
        raise IntegrityError(
            f"shipped Intel SGX Root CA: expected sha256:{INTEL_SGX_ROOT_CA_SHA256}, seen {seen}"
        )
    return cert.public_bytes(serialization.Encoding.DER)


def read_vcek_cache(directory: str | os.PathLike[str]) -> list[bytes]:
    """Every certificate file in an offline VCEK cache directory (PEM bundles split)."""
    root = Path(directory)
    if not root.is_dir():
        raise NotFoundError(f"snp VCEK cache {root}: expected a directory, seen none")
    out: list[bytes] = []
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt", ".cer"))
    for path in files[:_MAX_CACHE_FILES]:
        data = path.read_bytes()[: _MAX_CERT_BYTES + 1]
        if len(data) > _MAX_CERT_BYTES:
            raise BadInputError(f"snp VCEK cache {path}: expected at most {_MAX_CERT_BYTES} bytes")
        if b"-----BEGIN" in data:
            out.extend(c.public_bytes(serialization.Encoding.DER) for c in load_pem_certs(data, str(path)))
        else:
            out.append(data)
    return out


def snp_verifier(
    vcek_cache: str | os.PathLike[str] | None = None,
    *,
    crl_dir: str | os.PathLike[str] | None = None,
    clock: Clock = utc_now,
) -> snp.SnpVerifier:
    """An SNP verifier over the shipped AMD chains and, optionally, a VCEK cache directory
    and a directory of AMD CRLs (one per generation, as KDS serves them)."""
    cached = read_vcek_cache(vcek_cache) if vcek_cache is not None else []
    crls = read_amd_crls(crl_dir) if crl_dir is not None else []
    return snp.SnpVerifier(shipped_amd_chains(), cached, crls=crls, clock=clock)


def read_amd_crls(directory: str | os.PathLike[str]) -> list[snp.AmdCrl]:
    """Every ``*.crl``, ``*.der`` and ``*.pem`` in *directory*, each checked against the
    pinned ARK of its generation; a directory without one is an error (a typo, not a choice)."""
    root = Path(directory)
    if not root.is_dir():
        raise BadInputError(f"snp CRL directory {root}: expected a directory, seen none")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".crl", ".der", ".pem"))
    if not files:
        raise BadInputError(f"snp CRL directory {root}: expected *.crl, *.der or *.pem files, seen none")
    chains = shipped_amd_chains()
    out = []
    for path in files[:_MAX_CACHE_FILES]:
        data = path.read_bytes()[: _MAX_CERT_BYTES + 1]
        if len(data) > _MAX_CERT_BYTES:
            raise BadInputError(f"snp CRL {path}: expected at most {_MAX_CERT_BYTES} bytes")
        out.append(snp.parse_amd_crl(data, chains, f"snp CRL {path}"))
    return out


def tdx_verifier(
    collateral: str | os.PathLike[str] | None = None, *, clock: Clock = utc_now
) -> tdx.TdxVerifier:
    """A TDX verifier pinned to the shipped Intel root, with collateral when a directory is given."""
    root = shipped_intel_root()
    tcb_infos = read_tdx_collateral(collateral, root) if collateral is not None else []
    qe = read_tdx_qe_identity(collateral, root) if collateral is not None else None
    return tdx.TdxVerifier(root, tcb_infos, qe_identity=qe, clock=clock)


def read_tdx_qe_identity(directory: str | os.PathLike[str], root_ca: bytes) -> dcap.QeIdentity | None:
    """Intel's TDX QE identity (``qe_identity.json``, as PCS serves it), signed by the same
    chain as the TCB info; None when the directory holds none."""
    root = Path(directory)
    path = root / "qe_identity.json"
    if not path.is_file():
        return None
    chain_path = root / "tcb_info_issuer_chain.pem"
    if not chain_path.is_file():
        raise NotFoundError(f"tdx collateral {root}: expected tcb_info_issuer_chain.pem, seen none")
    return tdx.parse_qe_identity(path.read_bytes()[: _MAX_CERT_BYTES + 1], chain_path.read_bytes(), root_ca)


def read_tdx_collateral(directory: str | os.PathLike[str], root_ca: bytes) -> list[tdx.TcbInfo]:
    """Intel TDX TCB info files (``tcb_info*.json``, as served by Intel PCS) and their issuer
    chain (``tcb_info_issuer_chain.pem``, the ``TCB-Info-Issuer-Chain`` header), each checked."""
    root = Path(directory)
    chain_path = root / "tcb_info_issuer_chain.pem"
    if not chain_path.is_file():
        raise NotFoundError(f"tdx collateral {root}: expected tcb_info_issuer_chain.pem, seen none")
    chain = chain_path.read_bytes()
    return [
        tdx.parse_tcb_info(path.read_bytes(), chain, root_ca)
        for path in sorted(root.glob("tcb_info*.json"))[:_MAX_CACHE_FILES]
    ]


def sgx_verifier(
    collateral: str | os.PathLike[str] | None = None, *, clock: Clock = utc_now
) -> sgx.SgxVerifier:
    """An SGX verifier pinned to the shipped Intel root (the TDX one).  A collateral directory
    may hold Intel's CRLs (``*.crl``/``*crl*.der``/``*crl*.pem``), SGX TCB info
    (``tcb_info*.json`` with ``tcb_info_issuer_chain.pem``) and ``qe_identity.json``."""
    root = shipped_intel_root()
    if collateral is None:
        return sgx.SgxVerifier(root, clock=clock)
    directory = Path(collateral)
    if not directory.is_dir():
        raise NotFoundError(f"sgx collateral {directory}: expected a directory, seen none")
    crls = [
        sgx.parse_crl(path.read_bytes()[: _MAX_CERT_BYTES + 1], f"sgx CRL {path}")
        for path in sorted(directory.iterdir())[:_MAX_CACHE_FILES]
        if path.suffix.lower() == ".crl"
        or ("crl" in path.name.lower() and path.suffix.lower() in (".der", ".pem"))
    ]
    chain_path = directory / "tcb_info_issuer_chain.pem"
    infos = sorted(directory.glob("tcb_info*.json"))
    qe_path = directory / "qe_identity.json"
    if (infos or qe_path.is_file()) and not chain_path.is_file():
        raise NotFoundError(f"sgx collateral {directory}: expected tcb_info_issuer_chain.pem, seen none")
    chain = chain_path.read_bytes() if chain_path.is_file() else b""
    tcb_infos = [sgx.parse_tcb_info(path.read_bytes(), chain, root) for path in infos[:_MAX_CACHE_FILES]]
    qe = sgx.parse_qe_identity(qe_path.read_bytes(), chain, root) if qe_path.is_file() else None
    return sgx.SgxVerifier(root, crls=crls, tcb_infos=tcb_infos, qe_identity=qe, clock=clock)
