"""The AMD SEV-SNP verifier on real reports (Trustee test data) and on forged ones."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from layerseal.attest import snp, trust
from layerseal.attest.claims import Claims
from layerseal.attest.verifiers import SUPPORTED_TEES, verifier_for
from layerseal.attest.x509util import load_cert
from layerseal.broker.policy import Policy, evaluate
from layerseal.errors import BadInputError, DeniedError, LayersealError

DATA = Path(__file__).parents[2] / "data" / "tee" / "snp"
REPORT = (DATA / "test-report.bin").read_bytes()
VCEK = (DATA / "test-vcek.der").read_bytes()
VLEK_REPORT = (DATA / "test-vlek-report.bin").read_bytes()
VLEK = (DATA / "test-vlek.der").read_bytes()


def rd_of(report: bytes) -> bytes:
    """The captured reports were not bound by layerseal: expect the value they carry."""
    return report[0x50:0x90]


def ev(report: bytes, *certs: tuple[str, bytes]) -> bytes:
    return json.dumps(snp.evidence_json(report, certs)).encode()


@pytest.fixture(scope="module")
def verifier() -> snp.SnpVerifier:
    return trust.snp_verifier()


# ---------------------------------------------------------------------------- real evidence


def test_vcek_report_verifies_with_expected_claims(verifier: snp.SnpVerifier) -> None:
    claims = verifier.verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT))
    assert claims.tee == "snp"
    assert claims.measurement == (
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
    )
    assert claims.svn == 4
    assert claims.debug is False
    d = claims.details
    assert d["policy"] == 0x3001F
    assert d["vmpl"] == 0
    assert d["version"] == 2
    assert d["host_data"] == "00" * 32
    assert d["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert d["committed_tcb"] == d["reported_tcb"]
    assert d["chip_id"].startswith("c38427a30d4c7af9")
    assert d["generation"] == "milan"
    assert d["signing_key"] == "vcek"
    # claims survive the JSON round trip the broker's token does
    assert Claims.from_tree(json.loads(json.dumps(claims.as_tree()))) == Claims.from_tree(claims.as_tree())


# the VLEK of the captured report was valid from 2024-12-10 to 2025-12-10
VLEK_TIME = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


def at(when: datetime.datetime) -> snp.SnpVerifier:
    return trust.snp_verifier(clock=lambda: when)


def test_vlek_report_verifies_with_expected_claims() -> None:
    claims = at(VLEK_TIME).verify(ev(VLEK_REPORT, ("VLEK", VLEK)), rd_of(VLEK_REPORT))
    assert claims.measurement.startswith("8922ebbdd00ec2c5")
    assert claims.details["signing_key"] == "vlek"
    assert claims.details["version"] == 3
    assert claims.details["vmpl"] == 1
    assert claims.details["reported_tcb"] == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 217}
    assert claims.debug is False


def test_expired_vlek_is_refused_naming_the_certificate_and_the_date() -> None:
    later = datetime.datetime(2025, 12, 11, tzinfo=datetime.UTC)
    with pytest.raises(DeniedError) as info:
        at(later).verify(ev(VLEK_REPORT, ("VLEK", VLEK)), rd_of(VLEK_REPORT))
    assert str(info.value) == (
        "snp vlek chain validity (milan): expected certificates valid at 2025-12-11T00:00:00Z, "
        "seen 'SEV-VLEK' expired at 2025-12-10T22:14:21Z"
    )


def test_validity_is_checked_on_every_report_not_only_the_first() -> None:
    now = [VLEK_TIME]
    verifier = trust.snp_verifier(clock=lambda: now[0])
    verifier.verify(ev(VLEK_REPORT, ("VLEK", VLEK)), rd_of(VLEK_REPORT))  # chain checked and cached
    now[0] = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(DeniedError, match="'SEV-VLEK' expired"):
        verifier.verify(ev(VLEK_REPORT, ("VLEK", VLEK)), rd_of(VLEK_REPORT))


def test_vcek_not_yet_valid_is_refused() -> None:
    before = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)  # the VCEK starts on 2023-01-24
    with pytest.raises(DeniedError, match="'SEV-VCEK' valid only from 2023-01-24"):
        at(before).verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT))


def test_trustee_style_fields_and_pem_are_accepted(verifier: snp.SnpVerifier) -> None:
    pem = load_cert(VCEK, "vcek").public_bytes(serialization.Encoding.PEM).decode()
    doc = {"attestation_report": list(REPORT), "cert_chain": [{"cert_type": "VCEK", "data": list(VCEK)}]}
    assert verifier.verify(json.dumps(doc).encode(), rd_of(REPORT)).svn == 4
    doc2 = {"report": base64.b64encode(REPORT).decode(), "cert_chain": [pem]}
    assert verifier.verify(json.dumps(doc2).encode(), rd_of(REPORT)).svn == 4


def test_offline_vcek_cache_is_the_fallback(tmp_path: Path) -> None:
    (tmp_path / "other.pem").write_bytes(load_cert(VLEK, "vlek").public_bytes(serialization.Encoding.PEM))
    (tmp_path / "milan-vcek.der").write_bytes(VCEK)
    v = trust.snp_verifier(tmp_path)
    assert v.verify(ev(REPORT), rd_of(REPORT)).svn == 4
    assert v.verify(REPORT, rd_of(REPORT)).svn == 4  # the raw report alone
    with pytest.raises(
        BadInputError, match="snp vcek: expected one in the evidence cert_chain or the offline"
    ):
        trust.snp_verifier().verify(ev(REPORT), rd_of(REPORT))


def test_registered_under_rcar_tee_snp() -> None:
    assert "snp" in SUPPORTED_TEES
    v = verifier_for("snp")
    assert v.tee == "snp"
    assert verifier_for("snp") is v  # one instance keeps its chain cache
    assert v.verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT)).svn == 4


# ---------------------------------------------------------------------------- refusals


def test_report_data_not_of_this_session_is_denied(verifier: snp.SnpVerifier) -> None:
    with pytest.raises(DeniedError, match=r"snp report data: expected .* seen ec6c52d7"):
        verifier.verify(ev(REPORT, ("VCEK", VCEK)), bytes(64))


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# every 5th bit of the signed part plus every bit of the signature's r and s
_BITS = [*range(0, snp.SIGNED_SIZE * 8, 5), *range(snp.SIGNED_SIZE * 8, (snp.SIGNED_SIZE + 144) * 8, 3)]


def test_any_flipped_bit_is_refused(verifier: snp.SnpVerifier) -> None:
    refused: dict[str, int] = {}
    for bit in _BITS:
        bad = _flip(REPORT, bit)
        with pytest.raises((BadInputError, DeniedError)) as info:
            verifier.verify(ev(bad, ("VCEK", VCEK)), rd_of(bad))
        message = str(info.value)
        assert message.startswith("snp "), message
        check = message.split(":")[0]
        refused[check] = refused.get(check, 0) + 1
    assert refused["snp report signature"] > len(_BITS) // 2
    # fields checked before the signature name their own check
    assert "snp processor generation" in refused  # version 2 -> 3 turns on the CPUID check
    assert "snp vcek tcb" in refused
    assert "snp vcek hwID" in refused


def test_flipped_measurement_bit_names_the_signature(verifier: snp.SnpVerifier) -> None:
    bad = _flip(REPORT, 0x90 * 8 + 3)
    with pytest.raises(DeniedError, match=r"^snp report signature: expected valid under the vcek"):
        verifier.verify(ev(bad, ("VCEK", VCEK)), rd_of(bad))


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_invalid_vceks_are_refused(verifier: snp.SnpVerifier, name: str) -> None:
    with pytest.raises(
        DeniedError, match=r"^snp vcek signature \(milan\): expected a signature by 'SEV-Milan'"
    ):
        verifier.verify(ev(REPORT, ("VCEK", (DATA / name).read_bytes())), rd_of(REPORT))


def test_hwid_in_both_encodings_is_read() -> None:
    legacy = snp.parse_vek(load_cert((DATA / "test-vcek-invalid-legacy.der").read_bytes(), "c"), "vcek")
    new = snp.parse_vek(load_cert((DATA / "test-vcek-invalid-new.der").read_bytes(), "c"), "vcek")
    assert legacy.hw_id == new.hw_id == bytes(range(64))


def test_vcek_of_another_chip_or_tcb_is_refused(verifier: snp.SnpVerifier) -> None:
    # the VLEK report's TCB differs from the VCEK's: right signature scheme, wrong key
    with pytest.raises(BadInputError, match="snp vlek: expected one in the evidence cert_chain"):
        verifier.verify(ev(VLEK_REPORT, ("VCEK", VCEK)), rd_of(VLEK_REPORT))
    with pytest.raises(BadInputError, match="snp vcek: expected one"):
        verifier.verify(ev(REPORT, ("VLEK", VLEK)), rd_of(REPORT))


def test_wrong_generation_is_refused(verifier: snp.SnpVerifier) -> None:
    chains = {c.generation: c for c in trust.shipped_amd_chains()}
    genoa_turin_only = snp.SnpVerifier([chains["genoa"], chains["turin"]])
    with pytest.raises(
        DeniedError, match=r"snp processor generation: expected one of \['genoa', 'turin'\], seen milan"
    ):
        genoa_turin_only.verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT))
    # a Genoa ARK presented for a Milan VCEK
    genoa_ark = chains["genoa"].ark.public_bytes(serialization.Encoding.DER)
    with pytest.raises(DeniedError, match="snp ark: expected the pinned ARK-Milan"):
        verifier.verify(ev(REPORT, ("VCEK", VCEK), ("ARK", genoa_ark)), rd_of(REPORT))
    # a Genoa ASK cannot have signed a Milan VCEK, and a Milan bundle is not Genoa's
    milan_pem = (DATA / "milan_ask_ark_asvk.pem").read_bytes()
    with pytest.raises(BadInputError, match="snp genoa ark: expected subject 'ARK-Genoa', seen 'ARK-Milan'"):
        snp.parse_amd_chain("genoa", milan_pem)
    swapped = snp.AmdChain("milan", chains["milan"].ark, chains["genoa"].ask, chains["genoa"].asvk)
    with pytest.raises(DeniedError, match=r"snp vcek signature \(milan\): expected issuer 'SEV-Genoa'"):
        snp.SnpVerifier([swapped]).verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT))


def test_shipped_chains_are_the_test_data() -> None:
    for chain in trust.shipped_amd_chains():
        pem = (DATA / f"{chain.generation}_ask_ark_asvk.pem").read_bytes()
        assert snp.parse_amd_chain(chain.generation, pem).ark_fingerprint == chain.ark_fingerprint


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        (b"not json", "snp evidence: expected a JSON object or a raw report"),
        (b"[]", "snp evidence: expected a JSON object"),
        (b'{"cert_chain": []}', "snp evidence: expected field 'report'"),
        (json.dumps({"report": "AAAA"}).encode(), "snp report size: expected 1184 bytes, seen 3"),
        (json.dumps({"report": "!!"}).encode(), "snp evidence report: expected base64"),
        (ev(REPORT, ("VCEK", b"garbage")), "snp evidence cert_chain.0.: expected a PEM or DER X.509"),
        (
            ev(struct.pack("<I", 1) + REPORT[4:], ("VCEK", VCEK)),
            "snp report version: expected 2 or later, seen 1",
        ),
    ],
)
def test_malformed_evidence_is_bad_input(verifier: snp.SnpVerifier, evidence: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        verifier.verify(evidence, rd_of(REPORT))


# ---------------------------------------------------------------------------- forged AMD PKI


@dataclass
class FakeAmd:
    """A look-alike AMD PKI (small RSA keys) to forge reports the pinned roots must refuse."""

    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate

    def der(self, cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    def sign(self, report: bytes) -> bytes:
        sig = self.vcek_key.sign(report[: snp.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
        r, s = utils.decode_dss_signature(sig)
        tail = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return report[: snp.SIGNED_SIZE] + tail + report[snp.SIGNED_SIZE + 144 :]


def _pss_sign(builder: x509.CertificateBuilder, key: rsa.RSAPrivateKey) -> x509.Certificate:
    return builder.sign(
        key, hashes.SHA384(), rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_fake_amd(gen: str, tcb_ext: dict[str, int], hw_id: bytes) -> FakeAmd:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

    # AMD's exact names, so only the signatures tell the forgery apart
    real = {c.generation: c for c in trust.shipped_amd_chains()}[gen]
    names = {f"ARK-{gen.capitalize()}": real.ark.subject, f"SEV-{gen.capitalize()}": real.ask.subject}

    def base(subject: str, issuer: str, pub: object) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(names.get(subject, _name(subject)))
            .issuer_name(names.get(issuer, _name(issuer)))
            .public_key(pub)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
        )

    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    g = gen.capitalize()
    ark = _pss_sign(base(f"ARK-{g}", f"ARK-{g}", ark_key.public_key()), ark_key)
    ask = _pss_sign(base(f"SEV-{g}", f"ARK-{g}", ask_key.public_key()), ark_key)
    oids = {"bl": snp.OID_BL_SPL, "tee": snp.OID_TEE_SPL, "snp": snp.OID_SNP_SPL, "ucode": snp.OID_UCODE_SPL}
    if gen == "turin":
        oids["fmc"] = snp.OID_FMC_SPL
    builder = base("SEV-VCEK", f"SEV-{g}", vcek_key.public_key())
    for key, oid in oids.items():
        value = tcb_ext[key]
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), bytes([2, 1, value])), critical=False
        )
    builder = builder.add_extension(
        x509.UnrecognizedExtension(
            x509.ObjectIdentifier(snp.OID_HW_ID), b"\x04" + bytes([len(hw_id)]) + hw_id
        ),
        critical=False,
    )
    vcek = _pss_sign(builder, ask_key)
    return FakeAmd(ark_key, ark, ask_key, ask, vcek_key, vcek)


MILAN_TCB = {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}


@pytest.fixture(scope="module")
def fake_milan() -> FakeAmd:
    return make_fake_amd("milan", MILAN_TCB, REPORT[0x1A0:0x1E0])


def test_chain_not_ending_at_the_pinned_root_is_refused(
    verifier: snp.SnpVerifier, fake_milan: FakeAmd
) -> None:
    forged = fake_milan.sign(REPORT)
    f = fake_milan
    with pytest.raises(
        DeniedError, match=r"snp ark: expected the pinned ARK-Milan sha256:\w+, seen 'ARK-Milan'"
    ):
        verifier.verify(
            ev(forged, ("VCEK", f.der(f.vcek)), ("ASK", f.der(f.ask)), ("ARK", f.der(f.ark))), rd_of(forged)
        )
    with pytest.raises(
        DeniedError,
        match=r"snp ask signature \(milan\): expected a signature by 'ARK-Milan', seen an invalid one",
    ):
        verifier.verify(ev(forged, ("VCEK", f.der(f.vcek)), ("ASK", f.der(f.ask))), rd_of(forged))
    with pytest.raises(
        DeniedError, match=r"snp vcek signature \(milan\): expected a signature by 'SEV-Milan'"
    ):
        verifier.verify(ev(forged, ("VCEK", f.der(f.vcek))), rd_of(forged))
    # a verifier that pins the fake root accepts the same evidence: the pin is what refused it
    own = snp.SnpVerifier([snp.AmdChain("milan", f.ark, f.ask, None)])
    assert own.verify(ev(forged, ("VCEK", f.der(f.vcek))), rd_of(forged)).svn == 4


def test_debug_policy_bit_and_fields_are_claimed(fake_milan: FakeAmd) -> None:
    own = snp.SnpVerifier([snp.AmdChain("milan", fake_milan.ark, fake_milan.ask, None)])
    report = bytearray(REPORT)
    struct.pack_into("<IQ", report, 0x04, 9, 0x3001F | snp.POLICY_DEBUG)
    report[0xC0:0xE0] = b"\x11" * 32
    forged = fake_milan.sign(bytes(report))
    claims = own.verify(ev(forged, ("VCEK", fake_milan.der(fake_milan.vcek))), rd_of(forged))
    assert claims.debug is True
    assert claims.svn == 9
    assert claims.details["host_data"] == "11" * 32
    assert claims.details["policy"] & (1 << 19)


def test_turin_tcb_layout_and_short_hwid() -> None:
    fake = make_fake_amd("turin", {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 5}, b"\xab" * 8)
    report = bytearray(REPORT)
    struct.pack_into("<I", report, 0, 3)
    report[0x180:0x188] = bytes([1, 2, 3, 4, 0, 0, 0, 5])
    report[0x188:0x18B] = bytes([0x1A, 0x02, 0x00])
    report[0x1A0:0x1E0] = b"\xab" * 8 + bytes(56)
    own = snp.SnpVerifier([snp.AmdChain("turin", fake.ark, fake.ask, None)])
    forged = fake.sign(bytes(report))
    claims = own.verify(ev(forged, ("VCEK", fake.der(fake.vcek))), rd_of(forged))
    assert claims.details["reported_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    assert claims.details["generation"] == "turin"
    # CPUID naming another generation than the certificate is refused
    report[0x188:0x18B] = bytes([0x19, 0x11, 0x00])
    forged = fake.sign(bytes(report))
    with pytest.raises(
        DeniedError,
        match=r"snp processor generation: expected turin .* seen CPUID family 0x19 model 0x11 .genoa.",
    ):
        own.verify(ev(forged, ("VCEK", fake.der(fake.vcek))), rd_of(forged))


# ---------------------------------------------------------------------------- policy


def test_release_policy_evaluates_snp_claims(verifier: snp.SnpVerifier) -> None:
    claims = verifier.verify(ev(REPORT, ("VCEK", VCEK)), rd_of(REPORT)).as_tree()
    policy = Policy.parse(
        {
            "version": "1.0.0",
            "anyOf": [
                {
                    "allOf": [
                        {"claim": "tee", "equals": "snp"},
                        {"claim": "snp.measurement", "in": "refvalues:snp-measurements"},
                        {"claim": "snp.debug", "equals": False},
                        {"claim": "snp.vmpl", "equals": 0},
                        {"claim": "snp.reported_tcb.snp", "greaterOrEquals": 8},
                        {"claim": "svn", "greaterOrEquals": 4},
                    ]
                }
            ],
        }
    )
    allowed = evaluate(policy, claims, {"snp-measurements": [claims["measurement"]]})
    assert allowed.allowed, allowed.reason
    denied = evaluate(policy, claims, {"snp-measurements": ["00" * 48]})
    assert not denied.allowed
    assert "snp.measurement in" in denied.reason
    stricter = Policy.parse(
        {
            "version": "1.0.0",
            "anyOf": [{"allOf": [{"claim": "snp.reported_tcb.microcode", "greaterOrEquals": 200}]}],
        }
    )
    assert not evaluate(stricter, claims, {}).allowed


def test_errors_share_the_root() -> None:
    assert issubclass(DeniedError, LayersealError) and issubclass(BadInputError, LayersealError)


def test_broker_routes_snp_evidence_to_the_snp_verifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from layerseal.broker.app import create_app
    from layerseal.broker.server import open_broker
    from layerseal.crypto.keys import generate_key
    from layerseal.kbs.client import tee_pubkey_jwk

    monkeypatch.delenv("LAYERSEAL_MASTER_KEY", raising=False)
    broker = open_broker(str(tmp_path / "b.db"), create_master_key=True)
    with TestClient(create_app(broker)) as client:
        r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp"})
        assert r.status_code == 200, r.text
        sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
        body = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey_jwk(generate_key("EC-P256"))},
            "tee-evidence": snp.evidence_json(REPORT, [("VCEK", VCEK)]),
        }
        client.cookies.clear()
        r = client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
        # a genuine report, but not bound to this session's nonce and key
        assert r.status_code in (401, 403), r.text
        assert "snp report data: expected SHA-384 of this session's nonce" in r.json()["detail"]
    broker.store.dispose()


@pytest.mark.parametrize("name", ["evidence-v1.json", "evidence-v2.json"])
def test_azure_hcl_report_embeds_a_verifiable_snp_report(verifier: snp.SnpVerifier, name: str) -> None:
    """Azure's vTPM evidence carries an SNP report in its HCL report (offset 0x20); the SNP part
    verifies.  The vTPM quote on top of it is verified by ``attest.az_snp_vtpm`` (test_az_snp_vtpm.py)."""
    doc = json.loads((DATA.parent / "az-snp-vtpm" / name).read_text())
    hcl = base64.urlsafe_b64decode(doc["hcl_report"] + "=" * (-len(doc["hcl_report"]) % 4))
    report = hcl[0x20 : 0x20 + snp.REPORT_SIZE]
    claims = verifier.verify(ev(report, ("VCEK", base64.urlsafe_b64decode(doc["vcek"]))), rd_of(report))
    assert claims.details["generation"] == "milan"
    assert claims.details["reported_tcb"] == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    # the report data binds the HCL runtime data (which holds the vTPM attestation key)
    runtime = hcl[0x20 + snp.REPORT_SIZE :]
    var_size = struct.unpack_from("<I", runtime, 16)[0]
    assert hashlib.sha256(runtime[20 : 20 + var_size]).digest() == report[0x50:0x70]


def test_broker_trust_configuration_adds_the_vcek_cache(tmp_path: Path) -> None:
    from layerseal.attest.verifiers import TeeTrust, TeeVerifiers

    (tmp_path / "vcek.der").write_bytes(VCEK)
    configured = TeeVerifiers(TeeTrust(snp_vcek_cache=tmp_path))
    assert configured.verifier_for("snp").verify(REPORT, rd_of(REPORT)).svn == 4
    # another broker's (or the packaged) verifiers do not see that trust material
    with pytest.raises(BadInputError, match="offline VCEK cache"):
        verifier_for("snp").verify(REPORT, rd_of(REPORT))


# ---------------------------------------------------------------------------- AMD CRLs


def _crl(
    f: FakeAmd, revoked: list[int], next_update: datetime.datetime, key: rsa.RSAPrivateKey | None = None
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(f.ark.subject)
        .last_update(now - datetime.timedelta(days=1))
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(
        key or f.ark_key,
        hashes.SHA384(),
        rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_ask_on_the_crl_is_refused_and_others_pass(fake_milan: FakeAmd) -> None:
    f = fake_milan
    chain = snp.AmdChain("milan", f.ark, f.ask, None)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    forged = f.sign(REPORT)
    evidence = ev(forged, ("VCEK", f.der(f.vcek)))

    clean = snp.parse_amd_crl(_crl(f, [12345], later), [chain])
    assert clean.generation == "milan" and clean.revoked == frozenset({12345})
    assert snp.SnpVerifier([chain], crls=[clean]).verify(evidence, rd_of(forged)).svn == 4

    revoked = snp.parse_amd_crl(_crl(f, [f.ask.serial_number], later), [chain])
    with pytest.raises(DeniedError) as info:
        snp.SnpVerifier([chain], crls=[revoked]).verify(evidence, rd_of(forged))
    assert str(info.value) == (
        f"snp ask (SEV-Milan): expected a certificate not on AMD's milan CRL, "
        f"seen serial {f.ask.serial_number:#x} revoked"
    )


def test_crl_past_its_next_update_refuses_its_generation(fake_milan: FakeAmd) -> None:
    f = fake_milan
    chain = snp.AmdChain("milan", f.ark, f.ask, None)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    crl = snp.parse_amd_crl(_crl(f, [], soon), [chain])
    forged = f.sign(REPORT)
    verifier = snp.SnpVerifier([chain], crls=[crl], clock=lambda: soon + datetime.timedelta(minutes=1))
    with pytest.raises(DeniedError, match=r"snp CRL \(milan\): expected one current at .*, seen nextUpdate"):
        verifier.verify(ev(forged, ("VCEK", f.der(f.vcek))), rd_of(forged))


def test_crl_not_signed_by_the_pinned_ark_is_refused(fake_milan: FakeAmd, tmp_path: Path) -> None:
    f = fake_milan
    chain = snp.AmdChain("milan", f.ark, f.ask, None)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    with pytest.raises(DeniedError, match="signature by the pinned ARK-Milan, seen an invalid one"):
        snp.parse_amd_crl(_crl(f, [], later, key=f.ask_key), [chain])
    with pytest.raises(BadInputError, match=r"expected a DER or PEM X\.509 CRL"):
        snp.parse_amd_crl(b"not a crl", [chain])
    # the shipped (real) chains: a CRL of the look-alike ARK names an issuer they pin, yet
    # its signature is not the real ARK's
    (tmp_path / "milan.crl").write_bytes(_crl(f, [], later))
    with pytest.raises(
        DeniedError, match=r"snp CRL .*milan\.crl: expected a signature by the pinned ARK-Milan"
    ):
        trust.read_amd_crls(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match=r"expected \*\.crl, \*\.der or \*\.pem files, seen none"):
        trust.read_amd_crls(tmp_path / "empty")
    with pytest.raises(BadInputError, match="expected a directory, seen none"):
        trust.read_amd_crls(tmp_path / "missing")


def test_trust_material_is_held_per_verifier_set_not_per_process(tmp_path: Path) -> None:
    from layerseal.attest.verifiers import TeeTrust, TeeVerifiers

    (tmp_path / "vcek.der").write_bytes(VCEK)
    with_cache = TeeVerifiers(TeeTrust(snp_vcek_cache=tmp_path))
    assert with_cache.verifier_for("snp").verify(REPORT, rd_of(REPORT)).svn == 4
    assert with_cache.verifier_for("snp") is with_cache.verifier_for("snp")
    # another broker's set, and the process default, do not see this cache
    with pytest.raises(BadInputError, match="offline VCEK cache"):
        TeeVerifiers().verifier_for("snp").verify(REPORT, rd_of(REPORT))
    with pytest.raises(BadInputError, match="offline VCEK cache"):
        verifier_for("snp").verify(REPORT, rd_of(REPORT))


def test_each_broker_holds_its_own_tee_trust(tmp_path: Path) -> None:
    """Trust material is handed to the broker that serves with it, not set for the process."""
    from layerseal.broker.server import ServeOptions, _open_for_serving
    from layerseal.broker.service import Broker

    cache = tmp_path / "vcek-cache"
    cache.mkdir()
    (cache / "vcek.der").write_bytes(VCEK)

    def broker(name: str, vcek_cache: Path | None) -> Broker:
        return _open_for_serving(
            ServeOptions(
                db_url=str(tmp_path / f"{name}.db"),
                master_key_file=tmp_path / f"{name}.master-key",
                snp_vcek_cache=vcek_cache,
                log_level="warning",
            )
        )

    with_cache, without = broker("a", cache), broker("b", None)
    assert with_cache.verifiers.verifier_for("snp").verify(REPORT, rd_of(REPORT)).svn == 4
    with pytest.raises(BadInputError, match="offline VCEK cache"):
        without.verifiers.verifier_for("snp").verify(REPORT, rd_of(REPORT))
    with pytest.raises(BadInputError, match="offline VCEK cache"):
        verifier_for("snp").verify(REPORT, rd_of(REPORT))  # the packaged verifiers are untouched
