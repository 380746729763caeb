"""CoCo init-data: its digest checked against SNP HOSTDATA, TDX MRCONFIGID and the vTPM's PCR 8.

Evidence is forged under look-alike vendor PKIs (the forgers' roots are the verifiers'
pins here), so the TEE field can hold any digest; the rules are Trustee's verifier's.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from layerseal.attest import binding, initdata, rcar, snp, tdx
from layerseal.attest.az_snp_vtpm import HCL_HEADER_SIZE, HCL_VAR_DATA_OFFSET, AzSnpVtpmVerifier
from layerseal.attest.claims import Claims, Verifier
from layerseal.broker.policy import Policy, evaluate
from layerseal.crypto.keys import public_key_to_jwk
from layerseal.errors import BadInputError, DeniedError
from unit.attest.test_az_snp_vtpm import V2, _attest
from unit.attest.test_snp import REPORT, FakeAmd, make_fake_amd
from unit.attest.test_tdx import QUOTES, FakeIntel, fake_intel, forge_quote  # noqa: F401 (fixture)

NONCE = base64.b64encode(bytes(range(32))).decode()
PUBKEY = public_key_to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
RD = binding.report_data(NONCE, PUBKEY)
WHEN = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def toml(algorithm: str = "sha384", policy: str = "allow") -> str:
    return (
        f'algorithm = "{algorithm}"\nversion = "0.1.0"\n\n[data]\n'
        f"\"aa.toml\" = '''\n[token_configs]\n'''\n\"policy.rego\" = '''{policy}'''\n"
    )


def init_data(body: str) -> dict[str, str]:
    return {"format": "toml", "body": body}


def digest_of(body: str, algorithm: str = "sha384") -> bytes:
    return hashlib.new(algorithm, body.encode()).digest()


def attest(tee: str, evidence: bytes, verifier: Verifier, body: Any) -> Claims:
    return rcar.verify(
        tee, evidence, nonce=NONCE, tee_pubkey=PUBKEY, verifier_for=lambda _: verifier, init_data=body
    )


# ---------------------------------------------------------------------------- SNP HOSTDATA


@pytest.fixture(scope="module")
def fake_amd() -> FakeAmd:
    return make_fake_amd("milan", {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, REPORT[0x1A0:0x1E0])


def snp_verifier(f: FakeAmd) -> snp.SnpVerifier:
    return snp.SnpVerifier([snp.AmdChain("milan", f.ark, f.ask, None)], clock=lambda: WHEN)


def snp_evidence(f: FakeAmd, host_data: bytes, report_data: bytes = RD) -> bytes:
    raw = bytearray(REPORT)
    raw[0x50:0x90] = report_data
    raw[0xC0:0xE0] = host_data
    return json.dumps(snp.evidence_json(f.sign(bytes(raw)), [("VCEK", f.der(f.vcek))])).encode()


def test_snp_hostdata_holding_the_digest_gives_init_data_claims(fake_amd: FakeAmd) -> None:
    body = toml()
    claims = attest(
        "snp", snp_evidence(fake_amd, digest_of(body)[:32]), snp_verifier(fake_amd), init_data(body)
    )
    assert claims.init_data is not None
    tree = claims.as_tree()
    assert tree["init_data"]["digest"] == digest_of(body).hex()
    assert tree["init_data"]["algorithm"] == "sha384"
    assert tree["init_data"]["data"]["policy.rego"] == "allow"
    # policies reach it by path and, for keys with dots, by CEL
    policy = Policy.parse(
        {
            "version": "1.0.0",
            "anyOf": [
                {
                    "allOf": [
                        {"claim": "init_data.version", "equals": "0.1.0"},
                        {"cel": "claims.init_data.data['policy.rego'] == 'allow'"},
                    ]
                }
            ],
        }
    )
    assert evaluate(policy, tree, {}).allowed
    assert Claims.from_tree(json.loads(json.dumps(tree))).as_tree() == tree


def test_snp_sha256_digest_fills_hostdata_exactly(fake_amd: FakeAmd) -> None:
    body = toml("sha256")
    claims = attest(
        "snp", snp_evidence(fake_amd, digest_of(body, "sha256")), snp_verifier(fake_amd), init_data(body)
    )
    assert claims.as_tree()["init_data"]["algorithm"] == "sha256"


def test_snp_hostdata_of_other_init_data_is_refused(fake_amd: FakeAmd) -> None:
    evidence = snp_evidence(fake_amd, digest_of(toml())[:32])
    with pytest.raises(DeniedError, match=r"^snp HOSTDATA: expected the init-data digest \(sha384 "):
        attest("snp", evidence, snp_verifier(fake_amd), init_data(toml(policy="deny")))


def test_without_init_data_nothing_is_claimed(fake_amd: FakeAmd) -> None:
    claims = attest("snp", snp_evidence(fake_amd, bytes(32)), snp_verifier(fake_amd), None)
    assert claims.init_data is None and "init_data" not in claims.as_tree()


# ---------------------------------------------------------------------------- TDX MRCONFIGID

TD_BODY = 48  # quote header size; the TD report follows


def tdx_evidence(f: FakeIntel, mr_config_id: bytes) -> bytes:
    template = bytearray(QUOTES[4])
    template[TD_BODY + 184 : TD_BODY + 232] = mr_config_id
    template[TD_BODY + 520 : TD_BODY + 584] = RD
    return forge_quote(bytes(template), f.pck_key, f.pem(f.pck, f.root))


def test_tdx_mrconfigid_holding_the_digest_gives_init_data_claims(fake_intel: FakeIntel) -> None:  # noqa: F811
    body = toml()
    evidence = tdx_evidence(fake_intel, digest_of(body))
    claims = attest("tdx", evidence, tdx.TdxVerifier(fake_intel.root_der), init_data(body))
    assert claims.details["mr_config_id"] == digest_of(body).hex()
    assert claims.as_tree()["init_data"]["digest"] == digest_of(body).hex()


def test_tdx_sha256_digest_is_zero_padded_to_48_bytes(fake_intel: FakeIntel) -> None:  # noqa: F811
    body = toml("sha256")
    evidence = tdx_evidence(fake_intel, digest_of(body, "sha256") + bytes(16))
    assert attest("tdx", evidence, tdx.TdxVerifier(fake_intel.root_der), init_data(body)).init_data


def test_tdx_mrconfigid_of_other_init_data_is_refused(fake_intel: FakeIntel) -> None:  # noqa: F811
    evidence = tdx_evidence(fake_intel, digest_of(toml()))
    with pytest.raises(DeniedError, match=r"^tdx MRCONFIGID: expected the init-data digest"):
        attest("tdx", evidence, tdx.TdxVerifier(fake_intel.root_der), init_data(toml("sha512")))


# ---------------------------------------------------------------------------- vTPM PCR 8


def vtpm_evidence(f: FakeAmd, pcr8: bytes, *, select_pcr8: bool = True) -> bytes:
    """Azure evidence re-made under our keys: HCL var data with our AK, the SNP report binding
    it, and a TPM quote by that AK over PCRs 0..9 (or without 8)."""
    obj = json.loads(V2)
    hcl = bytearray(base64.urlsafe_b64decode(obj["hcl_report"] + "=="))
    ak = rsa.generate_private_key(65537, 2048)
    nums = ak.public_key().public_numbers()

    def b64u(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    var_data = json.dumps(
        {
            "keys": [{"kid": "HCLAkPub", "kty": "RSA", "e": b64u(nums.e), "n": b64u(nums.n)}],
            "user-data": RD.hex(),
        }
    ).encode()
    struct.pack_into("<I", hcl, HCL_VAR_DATA_OFFSET - 4, len(var_data))
    hcl = hcl[:HCL_VAR_DATA_OFFSET] + var_data
    report = bytearray(hcl[HCL_HEADER_SIZE : HCL_HEADER_SIZE + snp.REPORT_SIZE])
    report[0x50:0x70] = hashlib.sha256(var_data).digest()
    report[0x70:0x90] = bytes(32)
    report[0x180:0x188] = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # the forged VCEK's TCB
    hcl[HCL_HEADER_SIZE : HCL_HEADER_SIZE + snp.REPORT_SIZE] = f.sign(bytes(report))
    indices = [i for i in range(10) if select_pcr8 or i != 8]
    pcrs = [pcr8 if i == 8 else hashlib.sha256(bytes([i])).digest() for i in indices]
    bitmap = bytearray(3)
    for i in indices:
        bitmap[i // 8] |= 1 << (i % 8)
    message = _attest(
        extra=RD[:48], banks=((0x000B, bytes(bitmap)),), digest=hashlib.sha256(b"".join(pcrs)).digest()
    )
    signature = ak.sign(message, padding.PKCS1v15(), hashes.SHA256())
    obj["hcl_report"] = base64.urlsafe_b64encode(bytes(hcl)).rstrip(b"=").decode()
    obj["vcek"] = base64.urlsafe_b64encode(f.der(f.vcek)).rstrip(b"=").decode()
    obj["tpm_quote"] = {
        "signature": signature.hex(),
        "message": message.hex(),
        "pcrs": [p.hex() for p in pcrs],
    }
    return json.dumps(obj).encode()


@pytest.fixture(scope="module")
def vtpm_amd() -> FakeAmd:
    hcl = base64.urlsafe_b64decode(json.loads(V2)["hcl_report"] + "==")
    report = snp.parse_report(hcl[HCL_HEADER_SIZE : HCL_HEADER_SIZE + snp.REPORT_SIZE])
    return make_fake_amd("milan", {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, report.chip_id)


def vtpm_verifier(f: FakeAmd) -> AzSnpVtpmVerifier:
    return AzSnpVtpmVerifier(snp_verifier(f))


def extended(digest: bytes) -> bytes:
    return hashlib.sha256(bytes(32) + digest).digest()


def test_vtpm_pcr8_extended_with_the_digest_gives_init_data_claims(vtpm_amd: FakeAmd) -> None:
    body = toml("sha256")
    evidence = vtpm_evidence(vtpm_amd, extended(digest_of(body, "sha256")))
    claims = attest("az-snp-vtpm", evidence, vtpm_verifier(vtpm_amd), init_data(body))
    assert claims.as_tree()["init_data"]["digest"] == digest_of(body, "sha256").hex()


def test_vtpm_pcr8_of_other_init_data_is_refused(vtpm_amd: FakeAmd) -> None:
    evidence = vtpm_evidence(vtpm_amd, extended(digest_of(toml("sha256"), "sha256")))
    with pytest.raises(DeniedError, match=r"^az-snp-vtpm PCR8: expected the init-data digest"):
        attest("az-snp-vtpm", evidence, vtpm_verifier(vtpm_amd), init_data(toml("sha256", policy="x")))
    # the digest itself (not extended) is not what a PCR holds
    evidence = vtpm_evidence(vtpm_amd, digest_of(toml("sha256"), "sha256"))
    with pytest.raises(DeniedError, match="PCR8"):
        attest("az-snp-vtpm", evidence, vtpm_verifier(vtpm_amd), init_data(toml("sha256")))


def test_vtpm_needs_pcr8_and_a_sha256_digest(vtpm_amd: FakeAmd) -> None:
    body = toml("sha256")
    evidence = vtpm_evidence(vtpm_amd, extended(digest_of(body, "sha256")), select_pcr8=False)
    with pytest.raises(DeniedError, match="expected PCR8 in the quote, seen it not selected"):
        attest("az-snp-vtpm", evidence, vtpm_verifier(vtpm_amd), init_data(body))
    evidence = vtpm_evidence(vtpm_amd, extended(digest_of(toml(), "sha384")))
    with pytest.raises(BadInputError, match="expected sha256 for az-snp-vtpm"):
        attest("az-snp-vtpm", evidence, vtpm_verifier(vtpm_amd), init_data(toml()))


# ---------------------------------------------------------------------------- documents


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"format": "json", "body": "{}"}, r"format: expected 'toml'"),
        ({"format": "toml", "body": 3}, r"body: expected TOML text, seen int"),
        ({"format": "toml", "body": "algorithm = "}, r"body: expected TOML, seen invalid text"),
        (init_data('version = "0.1.0"\nalgorithm = "md5"\n'), r"algorithm: expected one of \['sha256'"),
        (init_data('algorithm = "sha256"\n'), r"expected 'version'"),
        (
            init_data('algorithm = "sha256"\nversion = "0.1.0"\n[data]\nx = 1\n'),
            r"data: expected a table of strings",
        ),
    ],
)
def test_malformed_init_data_is_bad_input(value: Any, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        initdata.parse(value)


def test_bare_toml_string_is_the_body() -> None:
    parsed = initdata.parse(toml())
    assert parsed is not None and parsed.digest == digest_of(toml())


@pytest.mark.parametrize("tee", ["sim", "sample"])
def test_tees_without_a_field_refuse_init_data(tee: str) -> None:
    claims = Claims(tee=tee, measurement="00", svn=0, debug=False)
    parsed = initdata.parse(toml())
    assert parsed is not None
    with pytest.raises(BadInputError, match=f"expected a TEE that binds its digest .*seen tee {tee}"):
        initdata.check(claims, parsed)


def test_large_entries_are_claimed_by_digest_only() -> None:
    big = "p" * 5000
    body = f'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"policy.rego" = "{big}"\n"aa.toml" = "x"\n'
    parsed = initdata.parse(body)
    assert parsed is not None
    claims = parsed.claims()
    assert claims["data"] == {"aa.toml": "x"}
    assert claims["data_sha256"]["policy.rego"] == "sha256:" + hashlib.sha256(big.encode()).hexdigest()
    assert len(json.dumps(claims)) < 1024
