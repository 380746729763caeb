"""The Intel SGX DCAP verifier on a real quote v3 (mobilecoin test data) with Intel's real CRLs."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from layerseal.attest import dcap, sgx, trust
from layerseal.attest.verifiers import SUPPORTED_TEES, verifier_for
from layerseal.attest.x509util import Validity
from layerseal.errors import BadInputError, DeniedError

DATA = Path(__file__).parents[2] / "data" / "tee" / "sgx"
QUOTE = (DATA / "quote-v3.dat").read_bytes()
CHAIN = (DATA / "pck-chain.pem").read_bytes()
CRLS = [sgx.parse_crl((DATA / n).read_bytes()) for n in ("processor_crl.der", "root_crl.der")]
RD = bytes(64)  # the captured quote's report data (all zero)
# inside both CRLs' windows: processor 2023-04-21..2023-05-21, root 2023-04-03..2024-04-02
PINNED = datetime.datetime(2023, 5, 1, tzinfo=datetime.UTC)

# offsets in the v3 quote: header 48, body 384, sig data length 4, then the signature data
BODY, SIGDATA = 48, 436
ISV_SIG, ATT_KEY, QE_REPORT, QE_SIG, AUTH = SIGDATA, SIGDATA + 64, SIGDATA + 128, SIGDATA + 512, SIGDATA + 578


def verifier(clock: datetime.datetime = PINNED, crls: list[sgx.Crl] | None = None) -> sgx.SgxVerifier:
    return sgx.SgxVerifier(
        trust.shipped_intel_root(), crls=CRLS if crls is None else crls, clock=lambda: clock
    )


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def with_chain(quote: bytes, pem: bytes) -> bytes:
    """The quote with another PCK chain (lengths fixed up; signatures untouched)."""
    parsed = sgx.parse_quote(quote)
    cut = len(quote) - len(parsed.pck_chain_pem)
    head = quote[: cut - 4] + struct.pack("<I", len(pem)) + pem
    sig_len = len(head) - SIGDATA
    return head[:432] + struct.pack("<I", sig_len) + head[436:]


def test_real_quote_verifies_with_its_claims() -> None:
    claims = verifier().verify(QUOTE, RD)
    assert claims.tee == "sgx"
    assert claims.measurement == "1dd0df84810e53e26b2b167dfe0f97cc4364085fe0bd41d5e18a759c21d5c189"
    assert claims.svn == 0
    assert claims.debug is True  # attributes 0x07: INIT | DEBUG | MODE64
    d = claims.details
    assert d["mrsigner"] == "d412a4f07ef83892a5915fb2ab584be31e186e5a4f95ab5f6950fd4eb8694d7b"
    assert (d["isv_prod_id"], d["isv_svn"], d["mode64"], d["quote_version"]) == (0, 0, True, 3)
    assert d["tcb_status"] == "unknown" and len(d["fmspc"]) == 12
    assert claims.as_tree()["sgx"]["mrenclave"] == claims.measurement


def test_json_evidence_and_registry() -> None:
    doc = json.dumps(sgx.evidence_json(QUOTE)).encode()
    assert verifier().verify(doc, RD).measurement.startswith("1dd0df84")
    assert "sgx" in SUPPORTED_TEES
    assert verifier_for("sgx").tee == "sgx"


def test_report_data_of_another_session_is_refused() -> None:
    with pytest.raises(DeniedError, match=r"^sgx report data: expected SHA-384 of this session"):
        verifier().verify(QUOTE, b"\x01" * 64)


@pytest.mark.parametrize(
    ("offset", "check"),
    [
        (BODY + 64, "sgx ISV report signature"),  # MRENCLAVE
        (BODY + 128, "sgx ISV report signature"),  # MRSIGNER
        (BODY + 48, "sgx ISV report signature"),  # attributes (debug)
        (BODY + 258, "sgx ISV report signature"),  # ISVSVN
        (BODY + 320, "sgx ISV report signature"),  # report data
        (ISV_SIG + 5, "sgx ISV report signature"),
        (ATT_KEY + 3, "sgx QE report data"),
        (QE_REPORT + 128, "sgx QE report signature"),
        (QE_SIG + 7, "sgx QE report signature"),
        (AUTH + 2, "sgx QE report data"),
        (8, "sgx quote attestation key type|sgx ISV report signature"),
    ],
)
def test_each_mutation_is_refused_naming_the_check(offset: int, check: str) -> None:
    with pytest.raises(DeniedError, match=f"^({check})"):
        verifier().verify(flip(QUOTE, offset), RD)


def test_header_mutations_are_refused_naming_the_field() -> None:
    with pytest.raises(BadInputError, match=r"^sgx quote version: expected 3 or 4, seen 2"):
        verifier().verify(b"\x02" + QUOTE[1:], RD)
    with pytest.raises(DeniedError, match=r"^sgx quote attestation key type: expected 2"):
        verifier().verify(QUOTE[:2] + b"\x03" + QUOTE[3:], RD)
    with pytest.raises(DeniedError, match=r"^sgx quote tee type: expected 0x0 \(SGX\), seen 0x81"):
        verifier().verify(QUOTE[:4] + b"\x81" + QUOTE[5:], RD)
    with pytest.raises(DeniedError, match=r"^sgx quote QE vendor: expected Intel"):
        verifier().verify(flip(QUOTE, 12), RD)
    with pytest.raises(
        BadInputError, match=r"^sgx quote signature data: expected 4167 bytes then zero padding"
    ):
        verifier().verify(QUOTE + b"\x01", RD)
    with pytest.raises(
        BadInputError, match=r"^sgx quote signature data: expected 4167 bytes then zero padding"
    ):
        verifier().verify(QUOTE[:1100], RD)
    with pytest.raises(BadInputError, match=r"^sgx quote QE auth data: expected 65535 bytes at offset 1014"):
        verifier().verify(QUOTE[: AUTH - 2] + b"\xff\xff" + QUOTE[AUTH:], RD)


def test_version_4_layout_parses_and_is_checked() -> None:
    """A v4 SGX quote wraps the QE report in certification data 6: reshaped from the real v3
    one, everything verifies except the attestation key's signature over the changed header."""
    q = sgx.parse_quote(QUOTE)
    inner = QUOTE[QE_REPORT:]
    sig = q.signature + q.attestation_key + struct.pack("<HI", 6, len(inner)) + inner
    v4 = struct.pack("<H", 4) + QUOTE[2:432] + struct.pack("<I", len(sig)) + sig
    parsed = sgx.parse_quote(v4)
    assert (parsed.version, parsed.pck_chain_pem, parsed.qe_report) == (4, q.pck_chain_pem, q.qe_report)
    with pytest.raises(DeniedError, match=r"^sgx ISV report signature"):
        verifier().verify(v4, RD)


def test_pck_chain_to_another_root_or_broken_link_is_refused() -> None:
    certs = x509.load_pem_x509_certificates(CHAIN)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    assert sgx.parse_quote(with_chain(QUOTE, pem)).pck_chain_pem == pem  # the helper is faithful
    assert verifier().verify(with_chain(QUOTE, pem), RD).tee == "sgx"
    no_root = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[:2])
    with pytest.raises(DeniedError, match=r"^sgx PCK chain root: expected the pinned 'Intel SGX Root CA'"):
        verifier().verify(with_chain(QUOTE, no_root), RD)
    skipped = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certs[0], certs[2]))
    with pytest.raises(DeniedError, match=r"^sgx PCK chain link 'Intel SGX PCK Certificate'"):
        verifier().verify(with_chain(QUOTE, skipped), RD)


def test_expired_crls_are_refused_unless_the_clock_is_inside_their_window() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(
        DeniedError, match=r"^sgx CRL 'Intel SGX PCK Processor CA': expected one current at 2026"
    ):
        verifier(now).verify(QUOTE, RD)
    with pytest.raises(DeniedError, match=r"^sgx CRL 'Intel SGX Root CA': expected one current at 2026"):
        verifier(now, crls=[CRLS[1]]).verify(QUOTE, RD)
    before = datetime.datetime(2023, 4, 10, tzinfo=datetime.UTC)  # processor CRL issued 04-21
    with pytest.raises(DeniedError, match=r"seen one valid 2023-04-21T22:00:36Z..2023-05-21T22:00:36Z"):
        verifier(before).verify(QUOTE, RD)
    assert verifier(now, crls=[]).verify(QUOTE, RD).tee == "sgx"  # no CRL given: none checked


def _forged_crl(issuer: x509.Name, revoked: int | None) -> sgx.Crl:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(datetime.datetime(2023, 4, 1, tzinfo=datetime.UTC))
        .next_update(datetime.datetime(2023, 6, 1, tzinfo=datetime.UTC))
    )
    if revoked is not None:
        entry = x509.RevokedCertificateBuilder().serial_number(revoked).revocation_date(PINNED).build()
        builder = builder.add_revoked_certificate(entry)
    return sgx.parse_crl(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_crl_not_signed_by_its_issuer_is_refused() -> None:
    leaf = x509.load_pem_x509_certificates(CHAIN)[0]
    forged = _forged_crl(leaf.issuer, None)
    with pytest.raises(
        DeniedError, match=r"^sgx CRL 'Intel SGX PCK Processor CA' signature: expected a signature by"
    ):
        verifier(crls=[forged]).verify(QUOTE, RD)


def test_unparsable_crl_is_bad_input() -> None:
    with pytest.raises(BadInputError, match=r"^sgx CRL: expected a DER or PEM X.509 CRL"):
        sgx.parse_crl(b"not a crl")


def test_collateral_directory_is_read(tmp_path: Path) -> None:
    for name in ("processor_crl.der", "root_crl.der"):
        shutil.copy(DATA / name, tmp_path / name)
    v = trust.sgx_verifier(tmp_path, clock=lambda: PINNED)
    assert v.verify(QUOTE, RD).tee == "sgx"
    late = trust.sgx_verifier(tmp_path, clock=lambda: datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    with pytest.raises(DeniedError, match=r"Processor CA': expected one current"):
        late.verify(QUOTE, RD)


def test_base64_json_garbage_is_bad_input() -> None:
    with pytest.raises(BadInputError, match=r"^sgx evidence: expected field 'quote'"):
        verifier().verify(b'{"q": 1}', RD)
    with pytest.raises(BadInputError, match=r"^sgx evidence quote: expected base64"):
        verifier().verify(json.dumps({"quote": "***"}).encode(), RD)
    assert base64.b64decode(sgx.evidence_json(QUOTE)["quote"]) == QUOTE


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    serial: int,
) -> x509.Certificate:
    name = lambda cn: x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])  # noqa: E731
    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
        .sign(signer, hashes.SHA256())
    )


def test_revoked_pck_is_refused() -> None:
    """Intel's CRLs revoke nothing in this chain, so revocation is shown under a test CA."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test PCK CA", ca_key, "Test PCK CA", ca_key, 1)
    leaf = _cert("Test PCK", leaf_key, "Test PCK CA", ca_key, 77)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(datetime.datetime(2023, 4, 1, tzinfo=datetime.UTC))
        .next_update(datetime.datetime(2023, 6, 1, tzinfo=datetime.UTC))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(77).revocation_date(PINNED).build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = dcap.PckChain((leaf, ca), leaf_key.public_key(), None, Validity.of([leaf, ca]))
    v = verifier(crls=[sgx.parse_crl(crl.public_bytes(serialization.Encoding.DER))])
    with pytest.raises(
        DeniedError, match=r"^sgx CRL 'Test PCK CA': expected 'Test PCK' not revoked, seen serial 4d"
    ):
        v._check_crls(chain, PINNED)


# ---------------------------------------------------------------------------- collateral
# Intel's signed SGX TCB info and QE identity for this platform are not in the test data:
# they are made here under a test root, shaped as Intel PCS serves them, from the real
# PCK's SGX extension and the real QE report.


def _raw(der_sig: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import utils

    r, s = utils.decode_dss_signature(der_sig)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class _TestIntel:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.tcb_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Test SGX Root CA", self.root_key, "Test SGX Root CA", self.root_key, 1)
        self.tcb = _cert("Test SGX TCB Signing", self.tcb_key, "Test SGX Root CA", self.root_key, 2)
        self.chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.tcb, self.root))
        self.root_der = self.root.public_bytes(serialization.Encoding.DER)

    def signed(self, member: str, body: dict[str, object]) -> bytes:
        raw = json.dumps(body, separators=(",", ":")).encode()
        sig = _raw(self.tcb_key.sign(raw, ec.ECDSA(hashes.SHA256())))
        return b'{"' + member.encode() + b'":' + raw + b',"signature":"' + sig.hex().encode() + b'"}'


PCK_EXT = dcap.sgx_extension(x509.load_pem_x509_certificates(CHAIN)[0])
QE_BODY = sgx.parse_quote(QUOTE).qe_report


def _tcb_info(
    intel: _TestIntel, levels: list[tuple[int, str]], next_update: str = "2023-06-01T00:00:00Z"
) -> bytes:
    assert PCK_EXT is not None

    def level(bump: int, status: str) -> dict[str, object]:
        comps = [{"svn": svn + bump} for svn in PCK_EXT.sgx_tcb_svns]
        return {"tcb": {"sgxtcbcomponents": comps, "pcesvn": PCK_EXT.pce_svn}, "tcbStatus": status}

    body = {
        "id": "SGX",
        "version": 3,
        "issueDate": "2023-04-01T00:00:00Z",
        "nextUpdate": next_update,
        "fmspc": PCK_EXT.fmspc,
        "tcbLevels": [level(bump, status) for bump, status in levels],
    }
    return intel.signed("tcbInfo", body)


def _qe_identity(intel: _TestIntel, mrsigner: bytes | None = None) -> bytes:
    body = {
        "id": "QE",
        "version": 2,
        "nextUpdate": "2023-06-01T00:00:00Z",
        "miscselect": QE_BODY[16:20][::-1].hex(),
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_BODY[48:64].hex(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": (mrsigner or QE_BODY[128:160]).hex(),
        "isvprodid": int.from_bytes(QE_BODY[256:258], "little"),
        "tcbLevels": [{"tcb": {"isvsvn": 0}, "tcbStatus": "UpToDate"}],
    }
    return intel.signed("enclaveIdentity", body)


def test_tcb_info_gives_the_status_of_the_first_level_met() -> None:
    intel = _TestIntel()
    info = sgx.parse_tcb_info(
        _tcb_info(intel, [(1, "UpToDate"), (0, "SWHardeningNeeded")]), intel.chain, intel.root_der
    )
    claims = sgx.SgxVerifier(trust.shipped_intel_root(), tcb_infos=[info], clock=lambda: PINNED).verify(
        QUOTE, RD
    )
    assert claims.details["tcb_status"] == "SWHardeningNeeded"
    assert claims.details["fmspc"] == info.fmspc and claims.details["collateral_expired"] is False
    below = sgx.parse_tcb_info(_tcb_info(intel, [(1, "UpToDate")]), intel.chain, intel.root_der)
    v = sgx.SgxVerifier(trust.shipped_intel_root(), tcb_infos=[below], clock=lambda: PINNED)
    assert v.verify(QUOTE, RD).details["tcb_status"] == "NotSupported"
    stale = sgx.parse_tcb_info(
        _tcb_info(intel, [(0, "UpToDate")], "2023-04-15T00:00:00Z"), intel.chain, intel.root_der
    )
    v = sgx.SgxVerifier(trust.shipped_intel_root(), tcb_infos=[stale], clock=lambda: PINNED)
    details = v.verify(QUOTE, RD).details
    assert (details["tcb_status"], details["collateral_expired"]) == ("unknown", True)


def test_collateral_not_signed_by_the_tcb_key_or_of_tdx_is_refused() -> None:
    intel = _TestIntel()
    raw = _tcb_info(intel, [(0, "UpToDate")])
    tampered = raw.replace(b'"UpToDate"', b'"UpToDatf"')
    with pytest.raises(
        DeniedError, match=r"^sgx TCB info signature: expected valid under the TCB signing key"
    ):
        sgx.parse_tcb_info(tampered, intel.chain, intel.root_der)
    with pytest.raises(DeniedError, match=r"^sgx TCB info issuer chain root: expected the pinned"):
        sgx.parse_tcb_info(raw, intel.chain, trust.shipped_intel_root())
    tdx_info = intel.signed("tcbInfo", {"id": "TDX", "fmspc": "00", "tcbLevels": []})
    with pytest.raises(BadInputError, match=r"^sgx TCB info id: expected 'SGX', seen 'TDX'"):
        sgx.parse_tcb_info(tdx_info, intel.chain, intel.root_der)


def test_qe_identity_of_intel_and_of_another_signer() -> None:
    intel = _TestIntel()
    identity = sgx.parse_qe_identity(_qe_identity(intel), intel.chain, intel.root_der)
    v = sgx.SgxVerifier(trust.shipped_intel_root(), qe_identity=identity, clock=lambda: PINNED)
    assert v.verify(QUOTE, RD).details["qe_tcb_status"] == "UpToDate"
    other = sgx.parse_qe_identity(_qe_identity(intel, mrsigner=b"\x01" * 32), intel.chain, intel.root_der)
    v = sgx.SgxVerifier(trust.shipped_intel_root(), qe_identity=other, clock=lambda: PINNED)
    with pytest.raises(DeniedError, match=r"^sgx QE identity MRSIGNER: expected Intel's 0101"):
        v.verify(QUOTE, RD)


def test_broker_trust_configuration_carries_the_sgx_collateral(tmp_path: Path) -> None:
    from layerseal.attest.verifiers import TeeTrust, TeeVerifiers

    shutil.copy(DATA / "processor_crl.der", tmp_path / "processor_crl.der")
    configured = TeeVerifiers(TeeTrust(sgx_collateral=tmp_path))
    # the real clock is past the CRL's nextUpdate: the configured CRL refuses
    with pytest.raises(DeniedError, match=r"^sgx CRL 'Intel SGX PCK Processor CA': expected one current"):
        configured.verifier_for("sgx").verify(QUOTE, RD)
    # verifiers without that collateral (the packaged ones) are not affected
    assert verifier_for("sgx").verify(QUOTE, RD).tee == "sgx"


def test_every_byte_before_the_pck_chain_is_covered() -> None:
    """No byte of header, body, signatures, keys, QE report or auth data can change unnoticed."""
    from layerseal.errors import LayersealError

    v = verifier()
    checks: set[str] = set()
    for offset in range(AUTH + 32 + 6):  # through the auth data and the certification data header
        with pytest.raises(LayersealError) as info:
            v.verify(flip(QUOTE, offset), RD)
        checks.add(str(info.value).split(":")[0])
    assert checks <= {
        "sgx quote version",
        "sgx quote attestation key type",
        "sgx quote tee type",
        "sgx quote QE vendor",
        "sgx ISV report signature",
        "sgx quote signature data",
        "sgx QE report signature",
        "sgx QE report data",
        "sgx quote QE auth data",
        "sgx quote PCK certification data type",
        "sgx quote PCK chain",
    }, checks
