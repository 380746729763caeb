"""Structure-aware fuzzing of the real-TEE verifiers on the captured evidence.

Every mutated piece of evidence (bit flips, truncations, JSON changes, certificates
re-encoded with other versions, algorithms, extensions, key types, names and lengths)
must end in a bad-input or denied error naming its check, never in another exception.
Case counts are fixed and the generators seeded, so a failure replays exactly.
"""

from __future__ import annotations

import collections
import datetime
import json
import random
import traceback
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from layerseal.attest import dcap, snp, trust
from layerseal.attest.az_snp_vtpm import AzSnpVtpmVerifier
from layerseal.attest.claims import Verifier
from layerseal.attest.sample import SampleAttester, SampleVerifier
from layerseal.attest.sim import SimVerifier
from layerseal.attest.sim_platform import SimAttester, init_platform, load_platform_info
from layerseal.attest.x509util import load_cert
from layerseal.errors import BadInputError, DeniedError
from support import der
from support.evidence_fuzz import CASES, DATA, flip_bits, json_mutation, mutate_cert, tdx_split

CASES_PER_TEE = 600
# inside the validity of every captured certificate (the VLEK's ends 2025-12-10)
WHEN = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


def _verifiers() -> dict[str, Verifier]:
    snp_verifier = trust.snp_verifier(clock=lambda: WHEN)
    return {
        "snp": snp_verifier,
        "tdx": trust.tdx_verifier(clock=lambda: WHEN),
        "az-snp-vtpm": AzSnpVtpmVerifier(snp_verifier),
    }


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "layerseal" in f.filename]
    last = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name}): {exc}"[
        :200
    ]


# the checks a good fuzzer must reach, so that it does not stop at the JSON parser
REACHED = {
    "snp": {
        "snp vcek signature (milan)",
        "snp vlek signature (milan)",
        "snp vcek key",
        "snp evidence cert_chain[0]",
    },
    "tdx": {
        "tdx PCK chain link 'Intel SGX PCK Certificate'",
        "tdx PCK chain root",
        "tdx quote signature data",
    },
    "az-snp-vtpm": {
        "az-snp-vtpm snp vcek signature (milan)",
        "az-snp-vtpm evidence vcek",
        "az-snp-vtpm hcl report size",
    },
}


@pytest.mark.parametrize("tee", sorted(CASES))
def test_malformed_evidence_is_refused_naming_a_check(tee: str) -> None:
    verifier = _verifiers()[tee]
    crashes: dict[str, str] = {}
    checks: collections.Counter[str] = collections.Counter()
    for label, evidence, report_data, _ in CASES[tee](random.Random(f"verifier-fuzz-{tee}"), CASES_PER_TEE):
        try:
            verifier.verify(evidence, report_data)
        except (BadInputError, DeniedError) as exc:
            message = str(exc)
            assert message.startswith(tee.split("-")[0]), f"{label}: {message}"
            assert ": expected" in message, f"{label}: {message}"
            checks[message.split(":")[0]] += 1
        except Exception as exc:
            where = _where(exc)
            crashes.setdefault(where.split(" (")[0], f"{label}: {where}")
    assert not crashes, "\n".join(sorted(crashes.values()))
    missing = REACHED[tee] - set(checks)
    assert not missing, f"the fuzzer never reached {missing}; reached {sorted(checks)}"


def _tbs(cert_der: bytes) -> bytes:
    root = der.parse(cert_der)
    assert root.children is not None
    return root.children[0].encode()


def test_signed_certificate_changes_are_never_accepted() -> None:
    """A mutant whose VCEK/VLEK or PCK chain changed in its signed part never verifies;
    mutants of unsigned parts (outer signature algorithm, reserved bytes) may."""
    verifiers = _verifiers()
    checked = 0
    for tee in sorted(CASES):
        for case in CASES[tee](random.Random(f"verifier-fuzz-{tee}"), CASES_PER_TEE):
            if not case.signed_cert_changed:
                continue
            checked += 1
            with pytest.raises((BadInputError, DeniedError)):
                verifiers[tee].verify(case.evidence, case.report_data)
    assert checked > CASES_PER_TEE


def test_certificate_field_parsers_only_raise_layerseal_errors() -> None:
    """The parsers that read a VCEK's or PCK's extensions after its signature held, fed
    certificates mutated anywhere: they name a field or refuse, never crash."""
    rng = random.Random("verifier-fuzz-fields")
    vcek = (DATA / "snp" / "test-vcek.der").read_bytes()
    _, chain, _ = tdx_split((DATA / "tdx" / "tdx_quote_4.dat").read_bytes())
    pck = x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.DER)
    crashes: dict[str, str] = {}
    for i in range(800):
        base, kind = (vcek, "vcek") if i % 2 else (pck, "pck")
        mutated, label = mutate_cert(rng, base)
        try:
            cert = load_cert(mutated, f"fuzzed {kind}")
            if kind == "vcek":
                snp.parse_vek(cert, rng.choice(["vcek", "vlek"]))
            else:
                dcap.sgx_extension(cert)
        except (BadInputError, DeniedError):
            continue
        except Exception as exc:
            where = _where(exc)
            crashes.setdefault(where.split(" (")[0], f"{kind} {label}: {where}")
    assert not crashes, "\n".join(sorted(crashes.values()))


def test_pck_sgx_extension_with_an_empty_component_oid_is_bad_input() -> None:
    _, chain, _ = tdx_split((DATA / "tdx" / "tdx_quote_4.dat").read_bytes())
    root = der.parse(x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.DER))
    tcb_component_1 = bytes.fromhex("2a864886f84d010d010201")  # 1.2.840.113741.1.13.1.2.1
    for node in root.walk():
        if node.tag == 0x04 and node.content.startswith(b"\x30") and len(node.content) > 300:
            inner = der.parse(node.content)
            next(n for n in inner.walk() if n.tag == 0x06 and n.content == tcb_component_1).content = b""
            node.content = inner.encode()
    with pytest.raises(BadInputError, match=r"^tdx PCK SGX extension: expected TCB components 1\.\.16"):
        dcap.sgx_extension(load_cert(root.encode(), "pck"))


def test_sim_and_sample_evidence_mutants_are_refused_naming_a_check(tmp_path: Path) -> None:
    init_platform(tmp_path)
    attester = SimAttester(tmp_path)
    rd = bytes(range(64))
    verifiers: dict[str, Verifier] = {
        "sim": SimVerifier(
            [
                x509.load_pem_x509_certificate(load_platform_info(tmp_path).certificate_pem).public_bytes(
                    serialization.Encoding.DER
                )
            ]
        ),
        "sample": SampleVerifier(),
    }
    seeds = {"sim": attester.evidence(rd), "sample": SampleAttester().evidence(rd)}
    rng = random.Random("verifier-fuzz-sim")
    crashes: dict[str, str] = {}
    for i in range(400):
        tee = "sim" if i % 2 else "sample"
        body, label = json_mutation(rng, seeds[tee])
        if i % 3 == 0:
            body = flip_bits(rng, json.dumps(seeds[tee]).encode(), 2)
            label = "bit flips"
        try:
            verifiers[tee].verify(body, rd)
        except (BadInputError, DeniedError) as exc:
            assert str(exc).startswith(tee), str(exc)
        except Exception as exc:
            where = _where(exc)
            crashes.setdefault(where.split(" (")[0], f"{tee} {label}: {where}")
    assert not crashes, "\n".join(sorted(crashes.values()))
