"""The Azure SEV-SNP vTPM verifier on real evidence (Trustee test data) and on tampered copies."""

from __future__ import annotations

import base64
import datetime
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization

from layerseal.attest import az_snp_vtpm, snp, trust
from layerseal.attest.az_snp_vtpm import AzSnpVtpmVerifier, parse_attest, pcr_digest_of
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.attest.claims import Claims
from layerseal.attest.verifiers import SUPPORTED_TEES, TeeVerifiers, verifier_for
from layerseal.attest.x509util import load_pem_certs
from layerseal.broker.policy import Policy, evaluate
from layerseal.errors import BadInputError, DeniedError

DATA = Path(__file__).parents[2] / "data" / "tee" / "az-snp-vtpm"
V1 = (DATA / "evidence-v1.json").read_bytes()
V2 = (DATA / "evidence-v2.json").read_bytes()
# what the captured quotes carry in extraData (Trustee's tests bind "challenge" and a SHA-384)
RD_V1 = b"challenge"
RD_V2 = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
)
MEASUREMENT_V1 = (
    "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e"
)
MEASUREMENT_V2 = (
    "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff"
)
VAR_DATA_OFFSET = 0x20 + snp.REPORT_SIZE + 20


@pytest.fixture(scope="module")
def verifier() -> AzSnpVtpmVerifier:
    # a fixed time inside the captured VCEK's validity (2023-05-02 .. 2030-05-02)
    return AzSnpVtpmVerifier(
        trust.snp_verifier(clock=lambda: datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))
    )


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def tamper(evidence: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(evidence)
    change(doc)
    return json.dumps(doc).encode()


def flip_hex(text: str, index: int, bit: int = 0) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[index] ^= 1 << bit
    return raw.hex()


def flip_hcl(offset: int) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        hcl = bytearray(b64url_decode(doc["hcl_report"]))
        hcl[offset] ^= 1
        doc["hcl_report"] = b64url_encode(bytes(hcl))

    return change


# ---------------------------------------------------------------------------- real evidence


def test_v1_evidence_verifies_with_expected_claims(verifier: AzSnpVtpmVerifier) -> None:
    claims = verifier.verify(V1, RD_V1)
    assert claims.tee == "az-snp-vtpm"
    assert claims.measurement == MEASUREMENT_V1
    assert claims.svn == 10
    assert claims.debug is False
    d = claims.details
    assert d["measurement"] == MEASUREMENT_V1
    assert d["vmpl"] == 0
    assert d["policy"] == 0x3001F
    assert d["generation"] == "milan"
    assert d["reported_tcb"] == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    assert d["evidence_version"] == 1
    assert d["report_data"] == RD_V1.hex()
    # the SNP report data is SHA-256 of the HCL var data, zero-padded
    assert (
        d["snp_report_data"] == "af2910341dd8108360e485f1b72494255190b9cdd5ccb44b73b883037cf99f21" + "00" * 32
    )
    pcrs = d["pcrs"]
    assert len(pcrs) == 24
    assert pcrs["pcr00"] == "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
    assert pcrs["pcr07"] == "3b20e022416fdf61d72e4da32b4354781be3de0608116976d28ffdad8c341d2a"
    assert pcrs["pcr08"] == "00" * 32
    quote = d["tpm_quote"]
    assert quote["clock"] == 0x359BAE
    assert (quote["reset_count"], quote["restart_count"], quote["safe"]) == (2, 0, True)
    assert quote["firmware_version"] == "2020031200120003"
    assert quote["qualified_signer"].startswith("000b")  # TPM2B_NAME: SHA-256 name
    assert d["vm_configuration"] == {
        "console-enabled": True,
        "secure-boot": True,
        "tpm-enabled": True,
        "vmUniqueId": "26F8BC30-774E-4290-8E7A-535F3B672AEE",
    }
    assert d["ak"].startswith("sha256:")


def test_v2_evidence_verifies_with_expected_claims(verifier: AzSnpVtpmVerifier) -> None:
    claims = verifier.verify(V2, RD_V2)
    assert claims.measurement == MEASUREMENT_V2
    assert claims.svn == 12
    assert claims.debug is False
    d = claims.details
    assert d["evidence_version"] == 2
    assert d["report_data"] == RD_V2.hex()
    assert d["pcrs"]["pcr00"] == "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
    assert d["pcrs"]["pcr07"] == "f014e5cbfa297ee787a976abc51bc1d67e23e1b9e4a60128a1106dd0adef0c5b"
    assert d["tpm_quote"]["clock"] == 0x13CB0EE6
    assert d["vm_configuration"]["vmUniqueId"] == "7DF7B373-B947-4AAA-96E5-C358F2A03D20"


def test_v2_accepts_layerseal_padded_report_data(verifier: AzSnpVtpmVerifier) -> None:
    """The attester quotes the bare SHA-384 and pads it in user-data; layerseal's binding is
    SHA-384 zero-padded to 64 bytes, the same value once regularized."""
    padded = RD_V2.ljust(REPORT_DATA_SIZE, b"\0")
    assert verifier.verify(V2, padded).details["report_data"] == RD_V2.hex()


def test_claims_survive_the_tree_round_trip_and_policies(verifier: AzSnpVtpmVerifier) -> None:
    claims = verifier.verify(V2, RD_V2)
    tree = claims.as_tree()
    assert Claims.from_tree(tree) == claims
    policy = Policy.parse(
        {
            "version": "1.0.0",
            "anyOf": [
                {
                    "allOf": [
                        {"claim": "tee", "equals": "az-snp-vtpm"},
                        {"claim": "measurement", "in": "refvalues:allowed-measurements"},
                        {"claim": "az-snp-vtpm.pcrs.pcr07", "equals": tree["az-snp-vtpm"]["pcrs"]["pcr07"]},
                        {"claim": "az-snp-vtpm.vm_configuration.secure-boot", "equals": True},
                        {"claim": "az-snp-vtpm.vmpl", "equals": 0},
                    ]
                }
            ],
        }
    )
    assert evaluate(policy, tree, {"allowed-measurements": [MEASUREMENT_V2]}).allowed
    assert not evaluate(policy, tree, {"allowed-measurements": [MEASUREMENT_V1]}).allowed


def test_registered_as_rcar_tee() -> None:
    assert "az-snp-vtpm" in SUPPORTED_TEES
    v = verifier_for("az-snp-vtpm")
    assert isinstance(v, AzSnpVtpmVerifier) and v.tee == "az-snp-vtpm"
    assert v is verifier_for("az-snp-vtpm")
    assert v.verify(V1, RD_V1).measurement == MEASUREMENT_V1
    # another set of verifiers builds its own over its own SNP verifier
    other = TeeVerifiers()
    assert other.verifier_for("az-snp-vtpm") is not v
    assert (
        cast(AzSnpVtpmVerifier, other.verifier_for("az-snp-vtpm")).verify(V1, RD_V1).measurement
        == MEASUREMENT_V1
    )


# ---------------------------------------------------------------------------- tampering


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _flip_quote(field: str, index: int) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["tpm_quote"][field] = flip_hex(doc["tpm_quote"][field], index)

    return change


def _flip_pcr(pcr: int) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["tpm_quote"]["pcrs"][pcr] = flip_hex(doc["tpm_quote"]["pcrs"][pcr], 31)

    return change


TAMPERED = {
    # the extraData byte: a forged nonce must fail as unsigned, not as a wrong nonce
    "quote message (extraData)": (_flip_quote("message", 0x2D), "az-snp-vtpm tpm quote signature"),
    "quote message (pcrDigest)": (_flip_quote("message", -1), "az-snp-vtpm tpm quote signature"),
    "quote signature": (_flip_quote("signature", 100), "az-snp-vtpm tpm quote signature"),
    "pcr value": (_flip_pcr(7), "az-snp-vtpm tpm quote pcr digest"),
    "hcl var data (AK modulus)": (flip_hcl(VAR_DATA_OFFSET + 80), "az-snp-vtpm hcl var data binding"),
    "hcl var data (user-data)": (flip_hcl(VAR_DATA_OFFSET + 1100), "az-snp-vtpm hcl var data binding"),
    "snp measurement": (flip_hcl(0x20 + 0x90), "az-snp-vtpm snp report signature"),
}


@pytest.mark.parametrize("evidence", [V1, V2], ids=["v1", "v2"])
@pytest.mark.parametrize("case", list(TAMPERED))
def test_one_flipped_bit_is_refused(verifier: AzSnpVtpmVerifier, evidence: bytes, case: str) -> None:
    change, check = TAMPERED[case]
    rd = RD_V1 if evidence is V1 else RD_V2
    with pytest.raises(DeniedError, match=check):
        verifier.verify(tamper(evidence, change), rd)


@pytest.mark.parametrize(("evidence", "rd"), [(V1, RD_V1), (V2, RD_V2)], ids=["v1", "v2"])
def test_other_report_data_is_refused(verifier: AzSnpVtpmVerifier, evidence: bytes, rd: bytes) -> None:
    other = bytes([rd[0] ^ 1]) + rd[1:]
    with pytest.raises(DeniedError, match=r"az-snp-vtpm tpm quote extraData: expected the report data"):
        verifier.verify(evidence, other)
    with pytest.raises(DeniedError, match="tpm quote extraData"):
        verifier.verify(evidence, rd + b"\1")


def test_v2_checks_the_hcl_user_data(verifier: AzSnpVtpmVerifier) -> None:
    """Relabelled as version 2, the v1 evidence (user-data all zero) no longer verifies."""
    with pytest.raises(DeniedError, match="az-snp-vtpm hcl user-data: expected the report data 6368616c"):
        verifier.verify(tamper(V1, _set(("version",), 2)), RD_V1)


def test_quote_from_another_vm_is_refused(verifier: AzSnpVtpmVerifier) -> None:
    """A genuine quote spliced into another VM's evidence: its AK did not sign it."""
    v1_quote = json.loads(V1)["tpm_quote"]
    with pytest.raises(DeniedError, match="az-snp-vtpm tpm quote signature"):
        verifier.verify(tamper(V2, _set(("tpm_quote",), v1_quote)), RD_V1)


def test_vcek_of_another_chip_is_refused(verifier: AzSnpVtpmVerifier) -> None:
    other = load_pem_certs((DATA / "vcek.pem").read_bytes(), "vcek.pem")[0]
    der = other.public_bytes(serialization.Encoding.DER)
    with pytest.raises(DeniedError, match=r"^az-snp-vtpm snp vcek"):
        verifier.verify(tamper(V1, _set(("vcek",), b64url_encode(der))), RD_V1)


def test_missing_pcr_is_refused(verifier: AzSnpVtpmVerifier) -> None:
    def drop(doc: dict[str, Any]) -> None:
        doc["tpm_quote"]["pcrs"].pop()

    with pytest.raises(DeniedError, match="az-snp-vtpm tpm quote pcrs: expected 24 values"):
        verifier.verify(tamper(V1, drop), RD_V1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(("version",), 0), "az-snp-vtpm evidence version: expected one of"),
        (_set(("version",), 3), "az-snp-vtpm evidence version"),
        (_set(("version",), True), "az-snp-vtpm evidence version"),
        (_set(("tpm_quote",), None), "az-snp-vtpm evidence tpm_quote"),
        (_set(("tpm_quote", "message"), "zz"), "az-snp-vtpm evidence tpm_quote.message: expected hex"),
        (_set(("tpm_quote", "pcrs"), ["00" * 31]), r"tpm_quote.pcrs\[0\]: expected 32 bytes"),
        (_set(("hcl_report",), 5), "az-snp-vtpm evidence hcl_report: expected a base64url string"),
        (_set(("hcl_report",), b64url_encode(b"HCLA" + bytes(100))), "az-snp-vtpm hcl report size"),
        (_set(("vcek",), b64url_encode(b"not a certificate")), "az-snp-vtpm evidence vcek"),
    ],
)
def test_malformed_evidence_is_bad_input(
    verifier: AzSnpVtpmVerifier, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        verifier.verify(tamper(V1, change), RD_V1)


def test_hcl_header_fields_are_checked(verifier: AzSnpVtpmVerifier) -> None:
    def patch(offset: int, value: bytes) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            hcl = bytearray(b64url_decode(doc["hcl_report"]))
            hcl[offset : offset + len(value)] = value
            doc["hcl_report"] = b64url_encode(bytes(hcl))

        return change

    request = 0x20 + snp.REPORT_SIZE
    cases = [
        (patch(0, b"XXXX"), "az-snp-vtpm hcl report signature"),
        (
            patch(request + 8, struct.pack("<I", 4)),
            r"az-snp-vtpm hcl report type: expected 2 \(SNP\), seen 4",
        ),
        (patch(request + 12, struct.pack("<I", 2)), "az-snp-vtpm hcl report hash type"),
        (patch(request + 16, struct.pack("<I", 5000)), "az-snp-vtpm hcl var data size"),
    ]
    for change, message in cases:
        with pytest.raises(BadInputError, match=message):
            verifier.verify(tamper(V1, change), RD_V1)


def test_oversized_report_data_is_bad_input(verifier: AzSnpVtpmVerifier) -> None:
    with pytest.raises(BadInputError, match="az-snp-vtpm expected report data"):
        verifier.verify(V1, bytes(65))


# ---------------------------------------------------------------------------- TPMS_ATTEST


def _attest(
    *,
    magic: int = 0xFF544347,
    kind: int = 0x8018,
    extra: bytes = b"nonce",
    banks: tuple[tuple[int, bytes], ...] = ((0x000B, b"\xff\xff\xff"),),
    digest: bytes = bytes(32),
) -> bytes:
    out = struct.pack(">IH", magic, kind)
    out += struct.pack(">H", 34) + b"\x00\x0b" + bytes(32)
    out += struct.pack(">H", len(extra)) + extra
    out += struct.pack(">QIIB", 1234, 2, 0, 1) + struct.pack(">Q", 7)
    out += struct.pack(">I", len(banks))
    for alg, bitmap in banks:
        out += struct.pack(">HB", alg, len(bitmap)) + bitmap
    return out + struct.pack(">H", len(digest)) + digest


def test_parse_attest_reads_every_field() -> None:
    a = parse_attest(_attest(banks=((0x000B, b"\x81\x00\x01"),), digest=b"\x11" * 32))
    assert a.extra_data == b"nonce"
    assert (a.clock, a.reset_count, a.restart_count, a.safe, a.firmware_version) == (1234, 2, 0, True, 7)
    assert a.selections[0].hash_alg == 0x000B
    assert a.selections[0].indices == (0, 7, 16)
    assert a.pcr_digest == b"\x11" * 32


def test_parse_attest_of_the_captured_quote() -> None:
    quote = json.loads(V1)["tpm_quote"]
    a = parse_attest(bytes.fromhex(quote["message"]))
    assert a.extra_data == RD_V1
    assert a.selections[0].indices == tuple(range(24))
    assert a.pcr_digest == pcr_digest_of(tuple(bytes.fromhex(p) for p in quote["pcrs"]))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (_attest(magic=0xFF544348), "tpm quote magic: expected 0xff544347"),
        (_attest(kind=0x8014), r"tpm quote type: expected 0x8018 \(quote\), seen 0x8014"),
        (_attest(extra=bytes(65)), "tpm quote extraData: expected at most 64 bytes"),
        (_attest() + b"\0", "tpm quote message: expected"),
        (_attest()[:-1], "tpm quote pcrDigest: expected 32 bytes"),
        (_attest(banks=((0x000B, b"\xff" * 5),)), "sizeofSelect: expected at most 4"),
    ],
)
def test_parse_attest_refuses_malformed_messages(message: bytes, error: str) -> None:
    with pytest.raises(BadInputError, match=error):
        parse_attest(message)


def test_quotes_over_other_or_several_banks_are_refused() -> None:
    pcrs = (bytes(32),) * 24
    for banks in (((0x000C, b"\xff\xff\xff"),), ((0x000B, b"\xff\xff\xff"), (0x0004, b"\xff\xff\xff"))):
        attest = parse_attest(_attest(banks=banks, digest=pcr_digest_of(pcrs)))
        with pytest.raises(
            DeniedError, match="az-snp-vtpm tpm quote pcr selection: expected one SHA-256 bank"
        ):
            az_snp_vtpm.check_pcrs(attest, pcrs)
