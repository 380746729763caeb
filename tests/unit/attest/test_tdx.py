"""The Intel TDX verifier on real DCAP quotes (Trustee test data) and on forged ones."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from layerseal.attest import dcap, tdx, trust
from layerseal.attest.verifiers import SUPPORTED_TEES, verifier_for
from layerseal.errors import BadInputError, DeniedError, NotFoundError

DATA = Path(__file__).parents[2] / "data" / "tee" / "tdx"
QUOTES = {n: (DATA / f"tdx_quote_{n}.dat").read_bytes() for n in (4, 5, 6)}


def rd_of(quote: bytes) -> bytes:
    """The captured quotes were not bound by layerseal: expect the value they carry."""
    return tdx.parse_quote(quote).td.report_data


# every captured quote's PCK chain is valid then (the youngest PCK starts 2025-04-08)
CAPTURED = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def verifier() -> tdx.TdxVerifier:
    return trust.tdx_verifier(clock=lambda: CAPTURED)


def test_expired_pck_chain_is_refused_on_every_quote() -> None:
    now = [CAPTURED]
    verifier = trust.tdx_verifier(clock=lambda: now[0])
    quote = QUOTES[4]
    verifier.verify(quote, rd_of(quote))  # the chain is checked and cached
    now[0] = datetime.datetime(2030, 2, 8, tzinfo=datetime.UTC)  # quote 4's PCK ends 2030-02-07
    with pytest.raises(DeniedError) as info:
        verifier.verify(quote, rd_of(quote))
    message = str(info.value)
    assert message.startswith("tdx PCK chain validity: expected certificates valid at 2030-02-08T00:00:00Z")
    assert "'Intel SGX PCK Certificate' expired at 2030-02-07" in message


def test_pck_not_yet_valid_is_refused() -> None:
    early = trust.tdx_verifier(clock=lambda: datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC))
    with pytest.raises(DeniedError, match="'Intel SGX PCK Certificate' valid only from 2025-04-08"):
        early.verify(QUOTES[6], rd_of(QUOTES[6]))


# ---------------------------------------------------------------------------- real quotes

EXPECTED = {
    4: {
        "quote_version": 4,
        "mr_td": "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031",
        "debug": True,
        "td_attributes": "0100001000000000",
        "tee_tcb_svn": "03000500000000000000000000000000",
        "fmspc": "50806f000000",
    },
    5: {
        "quote_version": 5,
        "mr_td": "dfba221b48a22af8511542ee796603f37382800840dcd978703909bf8e64d4c8a1e9de86e7c9638bfcba422f3886400a",
        "debug": False,
        "td_attributes": "0000001000000000",
        "tee_tcb_svn": "05010200000000000000000000000000",
        "fmspc": "90c06f000000",
    },
    6: {
        "quote_version": 4,
        "mr_td": "21e8dead92d6c69d7cbba79816686c03a48485c7df0c11f6f04792d5e1d378f6b8c46615ba6946adccac6becffbb1e88",
        "debug": False,
        "td_attributes": "0000001000000000",
        "tee_tcb_svn": "05030200000000000000000000000000",
        "fmspc": "00a06d080000",
    },
}


@pytest.mark.parametrize("n", [4, 5, 6])
def test_real_quote_verifies_with_expected_claims(verifier: tdx.TdxVerifier, n: int) -> None:
    quote = QUOTES[n]
    claims = verifier.verify(quote, rd_of(quote))
    assert claims.tee == "tdx"
    assert claims.measurement == EXPECTED[n]["mr_td"]
    assert claims.debug is EXPECTED[n]["debug"]
    for key, value in EXPECTED[n].items():
        assert claims.details[key] == value, key
    for key in ("rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id"):
        assert len(claims.details[key]) == 96
    assert claims.details["tcb_status"] == "unknown"  # no collateral given
    assert claims.details["report_data"] == rd_of(quote).hex()
    if n == 5:
        assert len(claims.details["mr_servicetd"]) == 96  # TD 1.5 body


def test_trustee_json_evidence_is_accepted(verifier: tdx.TdxVerifier) -> None:
    quote = QUOTES[5]
    doc = {"cc_eventlog": None, "quote": base64.b64encode(quote).decode()}
    assert verifier.verify(json.dumps(doc).encode(), rd_of(quote)).details["quote_version"] == 5
    urlsafe = {"quote": base64.urlsafe_b64encode(quote).decode().rstrip("=")}
    assert verifier.verify(json.dumps(urlsafe).encode(), rd_of(quote)).details["quote_version"] == 5


def test_registered_under_rcar_tee_tdx() -> None:
    assert "tdx" in SUPPORTED_TEES
    v = verifier_for("tdx")
    assert v.tee == "tdx"
    assert v.verify(QUOTES[4], rd_of(QUOTES[4])).debug is True


def test_shipped_root_is_the_one_in_the_quotes(verifier: tdx.TdxVerifier) -> None:
    assert verifier.root_fingerprint == "sha256:" + trust.INTEL_SGX_ROOT_CA_SHA256


# ---------------------------------------------------------------------------- refusals


def test_report_data_not_of_this_session_is_denied(verifier: tdx.TdxVerifier) -> None:
    with pytest.raises(DeniedError, match=r"^tdx report data: expected SHA-384 .* seen 7c71fe2c86eff65a"):
        verifier.verify(QUOTES[4], bytes(64))


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("n", [4, 5])
def test_any_flipped_bit_in_the_signed_part_is_refused(verifier: tdx.TdxVerifier, n: int) -> None:
    quote = QUOTES[n]
    signed_len = len(tdx.parse_quote(quote).signed)
    checks: set[str] = set()
    for bit in range(0, signed_len * 8, 3):
        bad = _flip(quote, bit)
        with pytest.raises((BadInputError, DeniedError)) as info:
            verifier.verify(bad, rd_of(quote))
        message = str(info.value)
        assert message.startswith("tdx "), message
        checks.add(message.split(":")[0])
    assert "tdx quote signature" in checks
    assert "tdx quote tee type" in checks or "tdx quote version" in checks


def test_flipped_bits_after_the_body_name_their_check(verifier: tdx.TdxVerifier) -> None:
    quote = QUOTES[4]
    q = tdx.parse_quote(quote)
    start = len(q.signed) + 4
    cases = {
        start + 5: "tdx quote signature",  # r of the quote signature
        start + 64 + 7: "tdx QE report data",  # the attestation key no longer matches the QE binding
        start + 128 + 6 + 100: "tdx QE report signature",  # inside the QE report
        start + 128 + 6 + 384 + 3: "tdx QE report signature",  # the QE report signature
        start + 128 + 6 + 448 + 2 + 1: "tdx QE report data",  # QE auth data
    }
    for offset, check in cases.items():
        with pytest.raises(DeniedError, match=f"^{check}:"):
            verifier.verify(_flip(quote, offset * 8), rd_of(quote))


def test_non_zero_trailing_bytes_are_refused(verifier: tdx.TdxVerifier) -> None:
    quote = QUOTES[6]  # zero padded after the signature data: accepted above
    with pytest.raises(
        BadInputError, match="tdx quote signature data: expected 4300 bytes then zero padding"
    ):
        verifier.verify(quote[:-1] + b"\x01", rd_of(quote))


def test_pck_chain_certificate_tampering_is_refused(verifier: tdx.TdxVerifier) -> None:
    quote = QUOTES[4]
    q = tdx.parse_quote(quote)
    # swap the PCK leaf for the intermediate: the QE report signature no longer holds
    pem_start = quote.index(b"-----BEGIN CERTIFICATE-----")
    certs = x509.load_pem_x509_certificates(q.pck_chain_pem)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])
    bad = _rebuild_cert_data(quote, pem_start, chain)
    with pytest.raises(DeniedError, match=r"^tdx QE report signature"):
        verifier.verify(bad, rd_of(quote))
    # drop the intermediate: the leaf is not issued by the root
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certs[0], certs[2]))
    with pytest.raises(
        DeniedError, match=r"^tdx PCK chain link 'Intel SGX PCK Certificate': expected issuer"
    ):
        verifier.verify(_rebuild_cert_data(quote, pem_start, chain), rd_of(quote))


def _rebuild_cert_data(quote: bytes, pem_start: int, chain: bytes) -> bytes:
    q = tdx.parse_quote(quote)
    head = quote[len(q.signed) + 4 : pem_start - 6]  # up to the PCK type/size fields
    cert_body = head[128 + 6 :] + struct.pack("<HI", 5, len(chain)) + chain
    sig_data = head[:128] + struct.pack("<HI", 6, len(cert_body)) + cert_body
    return q.signed + struct.pack("<I", len(sig_data)) + sig_data


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        (b"{nonsense", "tdx evidence: expected JSON"),
        (b"nonsense", "tdx quote size: expected at least 48 bytes, seen 8"),
        (b'{"quote": 3}', "tdx evidence: expected field 'quote'"),
        (b'{"quote": "@@@"}', "tdx evidence quote: expected base64"),
        (QUOTES[4][:100], "tdx quote body: expected 584 bytes at offset 48, seen 52"),
        (b"\x03\x00" + QUOTES[4][2:], "tdx quote version: expected 4 or 5, seen 3"),
        (QUOTES[4][:-10], "tdx quote signature data: expected 4300 bytes"),
    ],
)
def test_malformed_quotes_are_bad_input(verifier: tdx.TdxVerifier, evidence: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        verifier.verify(evidence, bytes(64))


# ---------------------------------------------------------------------------- forged Intel PKI


@dataclass
class FakeIntel:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb: x509.Certificate

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def pem(self, *certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _raw_sig(der: bytes) -> bytes:
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.fixture(scope="module")
def fake_intel() -> FakeIntel:
    """Intel's names and the real PCK's SGX extension, under keys this test owns."""
    real = x509.load_pem_x509_certificates(tdx.parse_quote(QUOTES[4]).pck_chain_pem)
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    root_key, pck_key, tcb_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))

    def cert(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        extra: tuple[x509.Extension[x509.ExtensionType], ...] = (),
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
        )
        for e in extra:
            b = b.add_extension(e.value, e.critical)
        return b.sign(signer, hashes.SHA256())

    root = cert(real[2].subject, root_key, root_key, real[2].subject)
    sgx_ext = real[0].extensions.get_extension_for_oid(x509.ObjectIdentifier(dcap.SGX_EXTENSION_OID))
    pck = cert(real[0].subject, pck_key, root_key, root.subject, (sgx_ext,))
    tcb_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX TCB Signing")])
    tcb = cert(tcb_name, tcb_key, root_key, root.subject)
    return FakeIntel(root_key, root, pck_key, pck, tcb_key, tcb)


def forge_quote(template: bytes, pck_key: ec.EllipticCurvePrivateKey, chain_pem: bytes) -> bytes:
    """A quote with the template's header and body, signed by a new attestation key
    certified by a QE report under *pck_key*."""
    q = tdx.parse_quote(template)
    att = ec.generate_private_key(ec.SECP256R1())
    att_raw = att.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    qe_report = bytearray(q.qe_report)
    qe_report[320:384] = hashlib.sha256(att_raw + q.qe_auth_data).digest() + bytes(32)
    qe_sig = _raw_sig(pck_key.sign(bytes(qe_report), ec.ECDSA(hashes.SHA256())))
    cert_body = (
        bytes(qe_report)
        + qe_sig
        + struct.pack("<H", len(q.qe_auth_data))
        + q.qe_auth_data
        + struct.pack("<HI", 5, len(chain_pem))
        + chain_pem
    )
    quote_sig = _raw_sig(att.sign(q.signed, ec.ECDSA(hashes.SHA256())))
    sig_data = quote_sig + att_raw + struct.pack("<HI", 6, len(cert_body)) + cert_body
    return q.signed + struct.pack("<I", len(sig_data)) + sig_data


def test_chain_not_ending_at_the_pinned_root_is_refused(
    verifier: tdx.TdxVerifier, fake_intel: FakeIntel
) -> None:
    f = fake_intel
    forged = forge_quote(QUOTES[4], f.pck_key, f.pem(f.pck, f.root))
    with pytest.raises(
        DeniedError,
        match=r"^tdx PCK chain root: expected the pinned 'Intel SGX Root CA' sha256:44a0196b.*, seen 'Intel SGX Root CA' sha256:",
    ):
        verifier.verify(forged, rd_of(forged))
    # the same quote verifies under a verifier pinned to the forger's root: the pin refused it
    own = tdx.TdxVerifier(f.root_der)
    assert own.verify(forged, rd_of(forged)).measurement == EXPECTED[4]["mr_td"]


def _level(sgx: list[int], pce: int, tdx_svns: list[int], status: str) -> dict[str, object]:
    return {
        "tcb": {
            "sgxtcbcomponents": [{"svn": v} for v in sgx],
            "pcesvn": pce,
            "tdxtcbcomponents": [{"svn": v} for v in tdx_svns],
        },
        "tcbDate": "2024-03-13T00:00:00Z",
        "tcbStatus": status,
    }


def _dates(next_update: str | None) -> dict[str, str]:
    """Collateral issued yesterday and current for a month, unless *next_update* says otherwise."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "issueDate": (now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nextUpdate": next_update or (now + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _collateral(
    f: FakeIntel,
    levels: list[dict[str, object]],
    fmspc: str = "50806f000000",
    next_update: str | None = None,
    extra: dict[str, object] | None = None,
) -> bytes:
    info = json.dumps(
        {
            "id": "TDX",
            "version": 3,
            **_dates(next_update),
            "fmspc": fmspc,
            "pceId": "0000",
            "tcbType": 0,
            "tcbLevels": levels,
            **(extra or {}),
        },
        separators=(",", ":"),
    ).encode()
    sig = _raw_sig(f.tcb_key.sign(info, ec.ECDSA(hashes.SHA256())))
    return b'{"tcbInfo":' + info + b',"signature":"' + sig.hex().encode() + b'"}'


# the real PCK of quote 4: SGX comps (5,5,13,2,3,1,0,3,0...), PCESVN 11; its TEE_TCB_SVN is 03 00 05 ...
_SGX_OK = [5, 5, 13, 2, 3, 1, 0, 3] + [0] * 8


def test_tcb_status_from_signed_collateral(fake_intel: FakeIntel, tmp_path: Path) -> None:
    f = fake_intel
    forged = forge_quote(QUOTES[4], f.pck_key, f.pem(f.pck, f.root))
    levels = [
        _level(_SGX_OK, 11, [4, 0, 5] + [0] * 13, "UpToDate"),  # TDX module SVN 4 > quote's 3
        _level(_SGX_OK, 11, [3, 0, 5] + [0] * 13, "OutOfDate"),
        _level([0] * 16, 0, [0] * 16, "OutOfDate"),
    ]
    (tmp_path / "tcb_info_50806f000000.json").write_bytes(_collateral(f, levels))
    (tmp_path / "tcb_info_issuer_chain.pem").write_bytes(f.pem(f.tcb, f.root))
    infos = trust.read_tdx_collateral(tmp_path, f.root_der)
    claims = tdx.TdxVerifier(f.root_der, infos).verify(forged, rd_of(forged))
    assert claims.details["tcb_status"] == "OutOfDate"
    up = [_level(_SGX_OK, 11, [3, 0, 5] + [0] * 13, "UpToDate")]
    info = tdx.parse_tcb_info(_collateral(f, up), f.pem(f.tcb, f.root), f.root_der)
    assert (
        tdx.TdxVerifier(f.root_der, [info]).verify(forged, rd_of(forged)).details["tcb_status"] == "UpToDate"
    )
    # no level met
    low = [_level([9] * 16, 11, [0] * 16, "UpToDate")]
    info = tdx.parse_tcb_info(_collateral(f, low), f.pem(f.tcb, f.root), f.root_der)
    assert (
        tdx.TdxVerifier(f.root_der, [info]).verify(forged, rd_of(forged)).details["tcb_status"]
        == "NotSupported"
    )
    # collateral for another FMSPC says nothing about this platform
    other = tdx.parse_tcb_info(_collateral(f, up, fmspc="00a06d080000"), f.pem(f.tcb, f.root), f.root_der)
    assert (
        tdx.TdxVerifier(f.root_der, [other]).verify(forged, rd_of(forged)).details["tcb_status"] == "unknown"
    )


def test_collateral_past_its_next_update_vouches_for_nothing(fake_intel: FakeIntel) -> None:
    f = fake_intel
    forged = forge_quote(QUOTES[4], f.pck_key, f.pem(f.pck, f.root))
    up = [_level(_SGX_OK, 11, [3, 0, 5] + [0] * 13, "UpToDate")]
    fresh = tdx.parse_tcb_info(_collateral(f, up), f.pem(f.tcb, f.root), f.root_der)
    claims = tdx.TdxVerifier(f.root_der, [fresh]).verify(forged, rd_of(forged))
    assert (claims.details["tcb_status"], claims.details["collateral_expired"]) == ("UpToDate", False)
    stale = tdx.parse_tcb_info(
        _collateral(f, up, next_update="2025-02-01T00:00:00Z"), f.pem(f.tcb, f.root), f.root_der
    )
    claims = tdx.TdxVerifier(f.root_der, [stale]).verify(forged, rd_of(forged))
    assert (claims.details["tcb_status"], claims.details["collateral_expired"]) == ("unknown", True)
    garbled = tdx.parse_tcb_info(_collateral(f, up, next_update="soon"), f.pem(f.tcb, f.root), f.root_der)
    claims = tdx.TdxVerifier(f.root_der, [garbled]).verify(forged, rd_of(forged))
    assert claims.details["collateral_expired"] is True  # fail closed


def test_forged_or_unpinned_collateral_is_refused(fake_intel: FakeIntel, tmp_path: Path) -> None:
    f = fake_intel
    good = _collateral(f, [_level(_SGX_OK, 11, [0] * 16, "UpToDate")])
    tampered = good.replace(b"UpToDate", b"UpToDatX")
    with pytest.raises(DeniedError, match=r"^tdx TCB info signature: expected valid"):
        tdx.parse_tcb_info(tampered, f.pem(f.tcb, f.root), f.root_der)
    with pytest.raises(
        DeniedError, match=r"^tdx TCB info issuer chain root: expected the pinned sha256:44a0196b"
    ):
        tdx.parse_tcb_info(good, f.pem(f.tcb, f.root), trust.shipped_intel_root())
    with pytest.raises(NotFoundError, match=r"expected tcb_info_issuer_chain.pem"):
        trust.read_tdx_collateral(tmp_path, f.root_der)


def test_sgx_extension_of_the_real_pck() -> None:
    pck = x509.load_pem_x509_certificates(tdx.parse_quote(QUOTES[4]).pck_chain_pem)[0]
    ext = dcap.sgx_extension(pck)
    assert ext is not None
    assert ext.fmspc == "50806f000000"
    assert ext.sgx_tcb_svns == tuple(_SGX_OK)
    assert ext.pce_svn == 11


# ---------------------------------------------------------------------------- QE identity


def _qe_identity(
    f: FakeIntel,
    qe_report: bytes,
    *,
    mrsigner: bytes | None = None,
    isvprodid: int | None = None,
    levels: tuple[tuple[int, str], ...] = ((8, "UpToDate"), (0, "OutOfDate")),
    next_update: str | None = None,
) -> bytes:
    body = json.dumps(
        {
            "id": "TD_QE",
            "version": 2,
            **_dates(next_update),
            "miscselect": qe_report[16:20][::-1].hex(),
            "miscselectMask": "FFFFFFFF",
            "attributes": qe_report[48:64].hex(),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": (mrsigner or qe_report[128:160]).hex(),
            "isvprodid": int.from_bytes(qe_report[256:258], "little") if isvprodid is None else isvprodid,
            "tcbLevels": [
                {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": st}
                for svn, st in levels
            ],
        },
        separators=(",", ":"),
    ).encode()
    sig = _raw_sig(f.tcb_key.sign(body, ec.ECDSA(hashes.SHA256())))
    return b'{"enclaveIdentity":' + body + b',"signature":"' + sig.hex().encode() + b'"}'


def test_qe_identity_of_intel_gives_the_qe_tcb_status(fake_intel: FakeIntel, tmp_path: Path) -> None:
    f = fake_intel
    forged = forge_quote(QUOTES[4], f.pck_key, f.pem(f.pck, f.root))
    qe_report = tdx.parse_quote(forged).qe_report
    isvsvn = int.from_bytes(qe_report[258:260], "little")
    (tmp_path / "qe_identity.json").write_bytes(
        _qe_identity(f, qe_report, levels=((isvsvn + 1, "UpToDate"), (isvsvn, "OutOfDate")))
    )
    (tmp_path / "tcb_info_issuer_chain.pem").write_bytes(f.pem(f.tcb, f.root))
    identity = trust.read_tdx_qe_identity(tmp_path, f.root_der)
    assert identity is not None and identity.mrsigner == qe_report[128:160]
    claims = tdx.TdxVerifier(f.root_der, qe_identity=identity).verify(forged, rd_of(forged))
    assert claims.details["qe_tcb_status"] == "OutOfDate"  # one ISVSVN below the newest level
    up = tdx.parse_qe_identity(
        _qe_identity(f, qe_report, levels=((isvsvn, "UpToDate"),)), f.pem(f.tcb, f.root), f.root_der
    )
    assert (
        tdx.TdxVerifier(f.root_der, qe_identity=up).verify(forged, rd_of(forged)).details["qe_tcb_status"]
        == "UpToDate"
    )
    stale = tdx.parse_qe_identity(
        _qe_identity(f, qe_report, next_update="2025-02-01T00:00:00Z"), f.pem(f.tcb, f.root), f.root_der
    )
    assert (
        tdx.TdxVerifier(f.root_der, qe_identity=stale).verify(forged, rd_of(forged)).details["qe_tcb_status"]
        == "unknown"
    )
    # without an identity nothing is claimed about the QE
    assert tdx.TdxVerifier(f.root_der).verify(forged, rd_of(forged)).details["qe_tcb_status"] == "unknown"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mrsigner": b"\x01" * 32}, "tdx QE identity MRSIGNER: expected Intel's 0101010101010101..., seen"),
        ({"isvprodid": 99}, "tdx QE identity ISVPRODID: expected 99, seen"),
    ],
)
def test_qe_other_than_the_identity_is_refused(
    fake_intel: FakeIntel, change: dict[str, Any], message: str
) -> None:
    f = fake_intel
    forged = forge_quote(QUOTES[4], f.pck_key, f.pem(f.pck, f.root))
    raw = _qe_identity(f, tdx.parse_quote(forged).qe_report, **change)
    identity = tdx.parse_qe_identity(raw, f.pem(f.tcb, f.root), f.root_der)
    with pytest.raises(DeniedError) as info:
        tdx.TdxVerifier(f.root_der, qe_identity=identity).verify(forged, rd_of(forged))
    assert str(info.value).startswith(message)


def test_qe_identity_not_signed_by_intel_is_refused(fake_intel: FakeIntel) -> None:
    f = fake_intel
    raw = _qe_identity(f, tdx.parse_quote(QUOTES[4]).qe_report)
    tampered = raw.replace(b'"isvprodid":', b'"isvprodid":1', 1)
    with pytest.raises(
        DeniedError, match="tdx QE identity signature: expected valid under the TCB signing key"
    ):
        tdx.parse_qe_identity(tampered, f.pem(f.tcb, f.root), f.root_der)
    with pytest.raises(DeniedError, match="tdx QE identity issuer chain root: expected the pinned"):
        tdx.parse_qe_identity(raw, f.pem(f.tcb), trust.shipped_intel_root())


# ---------------------------------------------------------------------------- TDX module identity


def _module(
    td: tdx.TdReport, ident: str | None = None, mrsigner: bytes | None = None, **kw: object
) -> dict[str, object]:
    out: dict[str, object] = {
        "mrsigner": (mrsigner if mrsigner is not None else td.mr_signer_seam).hex().upper(),
        "attributes": td.seam_attributes.hex(),
        "attributesMask": "FFFFFFFFFFFFFFFF",
        **kw,
    }
    if ident is not None:
        out["id"] = ident
    return out


def _verify_with_module(f: FakeIntel, template: bytes, extra: dict[str, object]) -> dict[str, object]:
    forged = forge_quote(template, f.pck_key, f.pem(f.pck, f.root))
    levels = [_level(_SGX_OK, 11, [0] * 16, "UpToDate")]
    info = tdx.parse_tcb_info(_collateral(f, levels, extra=extra), f.pem(f.tcb, f.root), f.root_der)
    return dict(tdx.TdxVerifier(f.root_der, [info]).verify(forged, rd_of(forged)).details)


def test_module_version_0_is_checked_against_tdx_module(fake_intel: FakeIntel) -> None:
    td = tdx.parse_quote(QUOTES[4]).td  # TEE_TCB_SVN 03 00 ...: major version 0
    details = _verify_with_module(fake_intel, QUOTES[4], {"tdxModule": _module(td)})
    assert (details["tdx_module_tcb_status"], details["tcb_status"]) == ("UpToDate", "UpToDate")
    with pytest.raises(
        DeniedError, match=r"tdx module identity MRSIGNERSEAM: expected 0101010101010101\.\.\., seen"
    ):
        _verify_with_module(fake_intel, QUOTES[4], {"tdxModule": _module(td, mrsigner=b"\x01" * 48)})


def test_module_identity_of_its_version_gives_the_module_status(fake_intel: FakeIntel) -> None:
    td = tdx.parse_quote(QUOTES[5]).td  # TEE_TCB_SVN 05 01 ...: TDX_01, module SVN 5
    assert (td.tee_tcb_svn[1], td.tee_tcb_svn[0]) == (1, 5)
    identities = [
        _module(td, "TDX_03", tcbLevels=[{"tcb": {"isvsvn": 3}, "tcbStatus": "UpToDate"}]),
        _module(
            td,
            "TDX_01",
            tcbLevels=[
                {"tcb": {"isvsvn": 6}, "tcbStatus": "UpToDate"},
                {"tcb": {"isvsvn": 2}, "tcbStatus": "OutOfDate"},
            ],
        ),
    ]
    details = _verify_with_module(
        fake_intel, QUOTES[5], {"tdxModule": _module(td), "tdxModuleIdentities": identities}
    )
    # the platform levels say UpToDate; the module's SVN 5 is below Intel's 6: the TCB is out of date
    assert (details["tdx_module_tcb_status"], details["tcb_status"]) == ("OutOfDate", "OutOfDate")


def test_module_version_without_an_identity_is_refused(fake_intel: FakeIntel) -> None:
    td = tdx.parse_quote(QUOTES[5]).td
    only_03 = [_module(td, "TDX_03", tcbLevels=[{"tcb": {"isvsvn": 3}, "tcbStatus": "UpToDate"}])]
    with pytest.raises(
        DeniedError, match=r"tdx module identity: expected TDX_01 among Intel's \(TDX_03\), seen none"
    ):
        _verify_with_module(fake_intel, QUOTES[5], {"tdxModule": _module(td), "tdxModuleIdentities": only_03})


def test_malformed_module_identity_is_bad_collateral(fake_intel: FakeIntel) -> None:
    f = fake_intel
    td = tdx.parse_quote(QUOTES[4]).td
    short = _collateral(f, [], extra={"tdxModule": _module(td, mrsigner=b"\x00" * 8)})
    with pytest.raises(BadInputError, match="tdx TCB info: expected tcbInfo"):
        tdx.parse_tcb_info(short, f.pem(f.tcb, f.root), f.root_der)


def test_qe_identity_with_wrong_field_sizes_is_bad_collateral(fake_intel: FakeIntel) -> None:
    f = fake_intel
    raw = _qe_identity(f, tdx.parse_quote(QUOTES[4]).qe_report, mrsigner=b"\x01" * 8)
    with pytest.raises(BadInputError, match="tdx QE identity: expected enclaveIdentity"):
        tdx.parse_qe_identity(raw, f.pem(f.tcb, f.root), f.root_der)
