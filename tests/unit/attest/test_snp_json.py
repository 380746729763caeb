"""SNP evidence as CoCo guests send it: the sev crate's JSON report object (v2, v3, v5 layouts)."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from layerseal.attest import snp, snp_json, trust
from layerseal.attest.verifiers import verifier_for
from layerseal.errors import BadInputError, DeniedError

DATA = Path(__file__).parents[2] / "data" / "tee" / "snp"
COCO = json.loads((DATA / "coco-guest-evidence.json").read_text())
REPORT = (DATA / "test-report.bin").read_bytes()
VCEK = (DATA / "test-vcek.der").read_bytes()
VLEK_REPORT = (DATA / "test-vlek-report.bin").read_bytes()
VLEK = (DATA / "test-vlek.der").read_bytes()


@pytest.fixture(scope="module")
def verifier() -> snp.SnpVerifier:
    return trust.snp_verifier()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_trustee_fixture_attests_up_to_the_binding_of_its_fixed_report_data(
    verifier: snp.SnpVerifier,
) -> None:
    # the fixture's report data was bound to a nonce of Trustee's test: the signature,
    # chain and TCB verify, and only the binding refuses it
    with pytest.raises(DeniedError, match="snp report data: expected SHA-384 of this session"):
        verifier.verify(dumps(COCO), bytes(64))
    report_data = bytes(COCO["attestation_report"]["report_data"])
    claims = verifier.verify(dumps(COCO), report_data)
    assert claims.details["generation"] == "genoa"
    assert claims.details["version"] == 3
    assert claims.measurement == bytes(COCO["attestation_report"]["measurement"]).hex()
    assert claims.details["reported_tcb"] == {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 25}


def test_trustee_fixture_through_the_rcar_verifier_registry() -> None:
    report_data = bytes(COCO["attestation_report"]["report_data"])
    assert verifier_for("snp").verify(dumps(COCO), report_data).tee == "snp"


def test_rebuilt_bytes_round_trip_the_object() -> None:
    raw = snp_json.report_bytes(COCO["attestation_report"])
    assert len(raw) == snp.REPORT_SIZE
    assert snp_json.report_object(raw) == COCO["attestation_report"]


@pytest.mark.parametrize(("report", "version"), [(REPORT, 2), (VLEK_REPORT, 3)], ids=["v2-vcek", "v3-vlek"])
def test_captured_reports_rebuild_byte_for_byte(report: bytes, version: int) -> None:
    obj = snp_json.report_object(report)
    assert obj["version"] == version
    assert (obj["cpuid_fam_id"] is None) == (version == 2)
    assert "launch_mit_vector" not in obj
    assert snp_json.report_bytes(obj) == report


def test_v2_object_verifies_like_its_bytes(verifier: snp.SnpVerifier) -> None:
    evidence = {
        "attestation_report": snp_json.report_object(REPORT),
        "cert_chain": [{"cert_type": "VCEK", "data": list(VCEK)}],
    }
    claims = verifier.verify(dumps(evidence), REPORT[0x50:0x90])
    assert claims.details["version"] == 2 and claims.details["generation"] == "milan"


def _resign(raw: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import utils

    r, s = utils.decode_dss_signature(key.sign(raw[: snp.SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    return raw[: snp.SIGNED_SIZE] + r.to_bytes(72, "little") + s.to_bytes(72, "little") + raw[0x330:]


def test_v5_layout_carries_the_mitigation_vectors() -> None:
    raw = bytearray(snp_json.report_bytes(COCO["attestation_report"]))
    struct.pack_into("<I", raw, 0, 5)
    struct.pack_into("<QQ", raw, 0x1F8, 0x11, 0x2233)
    key = ec.generate_private_key(ec.SECP384R1())
    signed = _resign(bytes(raw), key)
    obj = snp_json.report_object(signed)
    assert obj["launch_mit_vector"] == 0x11 and obj["current_mit_vector"] == 0x2233
    rebuilt = snp_json.report_bytes(json.loads(json.dumps(obj)))
    assert rebuilt == signed
    # a version-3 reading would drop the vectors from the signed bytes
    obj3 = dict(obj, version=3)
    assert snp_json.report_bytes(obj3)[0x1F8:0x208] == bytes(16)


def test_turin_layout_puts_fmc_first() -> None:
    raw = bytearray(snp_json.report_bytes(COCO["attestation_report"]))
    raw[0x188:0x18A] = bytes([0x1A, 0x02])  # Turin CPUID
    raw[0x180:0x188] = bytes([7, 10, 0, 23, 0, 0, 0, 25])
    obj = snp_json.report_object(bytes(raw))
    assert obj["reported_tcb"] == {"fmc": 7, "bootloader": 10, "tee": 0, "snp": 23, "microcode": 25}
    assert snp_json.report_bytes(obj)[0x180:0x188] == bytes(raw[0x180:0x188])


def test_sev5_legacy_object_is_rebuilt_with_its_reserved_fields() -> None:
    raw = REPORT

    def tcb(at: int) -> dict[str, Any]:
        b = raw[at : at + 8]
        return {"bootloader": b[0], "tee": b[1], "_reserved": list(b[2:6]), "snp": b[6], "microcode": b[7]}

    obj = snp_json.report_object(raw)
    legacy: dict[str, Any] = {k: obj[k] for k in ("version", "guest_svn", "policy", "family_id", "image_id")}
    legacy.update(
        vmpl=obj["vmpl"],
        sig_algo=obj["sig_algo"],
        current_tcb=tcb(0x38),
        plat_info=obj["plat_info"],
        _author_key_en=obj["key_info"],
        _reserved_0=0,
        report_data=obj["report_data"],
        measurement=obj["measurement"],
        host_data=obj["host_data"],
        id_key_digest=obj["id_key_digest"],
        author_key_digest=obj["author_key_digest"],
        report_id=obj["report_id"],
        report_id_ma=obj["report_id_ma"],
        reported_tcb=tcb(0x180),
        _reserved_1=list(raw[0x188:0x1A0]),
        chip_id=obj["chip_id"],
        committed_tcb=tcb(0x1E0),
        current_build=raw[0x1E8],
        current_minor=raw[0x1E9],
        current_major=raw[0x1EA],
        _reserved_2=raw[0x1EB],
        committed_build=raw[0x1EC],
        committed_minor=raw[0x1ED],
        committed_major=raw[0x1EE],
        _reserved_3=raw[0x1EF],
        launch_tcb=tcb(0x1F0),
        _reserved_4=list(raw[0x1F8:0x2A0]),
        signature={"r": obj["signature"]["r"], "s": obj["signature"]["s"], "_reserved": list(raw[0x330:])},
    )
    assert snp_json.report_bytes(legacy) == raw


def test_crl_and_other_certificate_table_entries_are_skipped(verifier: snp.SnpVerifier) -> None:
    evidence = copy.deepcopy(COCO)
    evidence["cert_chain"] += [
        {"cert_type": "CRL", "data": [1, 2, 3]},
        {"cert_type": {"OTHER": "a8074bc2-a25a-483e-aae6-39c045a0b8a1"}, "data": [4]},
    ]
    report_data = bytes(COCO["attestation_report"]["report_data"])
    assert verifier.verify(dumps(evidence), report_data).tee == "snp"


def _altered(path: tuple[str, ...], value: Any) -> bytes:
    evidence = copy.deepcopy(COCO)
    target = evidence["attestation_report"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return dumps(evidence)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("measurement", 0), 0),
        (("host_data", 31), 1),
        (("policy",), 196608 | (1 << 19)),
        (("current", "build"), 41),
        (("committed_tcb", "snp"), 22),
        (("guest_svn",), 1),
    ],
)
def test_any_altered_field_breaks_the_signature(
    verifier: snp.SnpVerifier, path: tuple[str, ...], value: Any
) -> None:
    report_data = bytes(COCO["attestation_report"]["report_data"])
    with pytest.raises(DeniedError, match="snp report signature"):
        verifier.verify(_altered(path, value), report_data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("measurement",),
            [0] * 47,
            r"attestation_report\.measurement: expected an array of 48 bytes, seen 47",
        ),
        (("chip_id",), "00", r"chip_id: expected an array of 64 bytes, seen str"),
        (("vmpl",), -1, r"vmpl: expected an integer 0..2\^32-1"),
        (("current_tcb", "snp"), 256, r"current_tcb\.snp: expected an integer 0..2\^8-1"),
        (("version",), 1, r"version: expected 2 or later, seen 1"),
        (("signature",), {"r": [0] * 72}, r"signature: expected field 's'"),
        (("cpuid_fam_id",), None, r"cpuid_fam_id: expected an integer"),
    ],
)
def test_malformed_objects_are_bad_input(path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        snp.parse_evidence(_altered(path, value))
