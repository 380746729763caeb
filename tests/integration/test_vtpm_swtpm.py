"""Azure vTPM attesters against swtpm (a real TPM 2.0 emulator) with the captured HCL report.

The TPM part is real: tpm2-tools read the NV indices, write the report data and quote the
PCRs with an attestation key persisted where Azure keeps it.  The HCL report is Azure's,
captured (tests/data/tee/az-snp-vtpm); it names Azure's attestation key, not swtpm's, so
the SNP evidence is refused at the quote signature; the quote is then checked with
swtpm's key.  For TDX no captured HCL report exists: one is built around swtpm's key, and
the TD quote (a captured one, from a fake IMDS) is refused at its binding of the var data.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from layerseal.attest import az_snp_vtpm, az_tdx_vtpm, binding, rcar, tdx, trust, vtpm
from layerseal.attest.attesters import detect, make_attester
from layerseal.attest.claims import Claims
from layerseal.errors import DeniedError
from support import swtpm

pytestmark = pytest.mark.skipif(not swtpm.available(), reason="swtpm/tpm2-tools not installed (make setup)")

DATA = Path(__file__).parents[1] / "data" / "tee"
CAPTURED = json.loads((DATA / "az-snp-vtpm" / "evidence-v2.json").read_text())
HCL = base64.urlsafe_b64decode(CAPTURED["hcl_report"] + "=" * (-len(CAPTURED["hcl_report"]) % 4))
TD_QUOTE = (DATA / "tdx" / "tdx_quote_4.dat").read_bytes()
NONCE = "c3d0cG0gbm9uY2U"
JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "BBBB"}
RD = binding.report_data(NONCE, JWK)
INIT_DATA = "algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''allow'''\n"


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("swtpm")
    with swtpm.running(root / "state") as tcti:
        swtpm.azure_like(tcti, root / "work", HCL)
        yield tcti, root / "work"


def ak_public(tpm: tuple[str, Path]) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(swtpm.ak_public_pem(*tpm))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def check_quote_with_swtpm_key(quote: dict[str, Any], key: rsa.RSAPublicKey) -> az_snp_vtpm.Attest:
    message, signature = bytes.fromhex(quote["message"]), bytes.fromhex(quote["signature"])
    key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    attest = az_snp_vtpm.parse_attest(message)
    pcrs = tuple(bytes.fromhex(p) for p in quote["pcrs"])
    assert attest.selections == (az_snp_vtpm.PcrSelection(az_snp_vtpm.TPM_ALG_SHA256, tuple(range(24))),)
    assert attest.pcr_digest == az_snp_vtpm.pcr_digest_of(pcrs)
    return attest


def test_detection_reads_the_hcl_report_from_nv(
    tpm: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tcti, _ = tpm
    assert vtpm.read_hcl_report(tcti) == HCL[: swtpm.MAX_NV]
    assert vtpm.detect(tcti) == "az-snp-vtpm"
    monkeypatch.setenv("LAYERSEAL_TEE_SYSROOT", str(tpm[1]))  # nothing else there
    monkeypatch.setenv("LAYERSEAL_TPM_TCTI", tcti)
    found = detect()
    assert found.tee == "az-snp-vtpm" and "HCL report of a az-snp-vtpm VM" in found.why
    assert make_attester("auto", None).tee == "az-snp-vtpm"


def test_snp_vtpm_evidence_is_refused_at_the_ak_and_its_quote_holds(
    tpm: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tcti, _ = tpm
    (tmp_path / "vcek.der").write_bytes(base64.urlsafe_b64decode(CAPTURED["vcek"] + "=="))
    monkeypatch.setenv("LAYERSEAL_AZ_VCEK", str(tmp_path / "vcek.der"))
    evidence = vtpm.VtpmAttester("az-snp-vtpm", tcti).evidence(RD, hcl=HCL)
    assert swtpm.tool(tcti, "tpm2_nvread", "0x01400002") == RD  # what the paravisor reads
    assert evidence["version"] == 2 and evidence["vcek"] == CAPTURED["vcek"].rstrip("=")
    verifier = az_snp_vtpm.AzSnpVtpmVerifier(trust.snp_verifier())
    with pytest.raises(DeniedError, match=r"^az-snp-vtpm tpm quote signature: expected RSASSA-PKCS1-v1_5"):
        verifier.verify(json.dumps(evidence).encode(), RD)
    attest = check_quote_with_swtpm_key(evidence["tpm_quote"], ak_public(tpm))
    assert attest.extra_data == RD


def _hcl_tdx(var_data: bytes, td_report_data: bytes) -> bytes:
    td_report = bytes(128) + td_report_data + bytes(1184 - 192)
    request = struct.pack("<5I", 20 + len(var_data), 1, az_tdx_vtpm.HCL_REPORT_TYPE_TDX, 1, len(var_data))
    return b"HCLA" + bytes(0x1C) + td_report + request + var_data


def _var_data(key: rsa.RSAPublicKey, user_data: bytes) -> bytes:
    nums = key.public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode().rstrip("=")

    jwk = {"kid": "HCLAkPub", "kty": "RSA", "e": b64(nums.e), "n": b64(nums.n), "key_ops": ["sign"]}
    return json.dumps({"keys": [jwk], "user-data": user_data.hex().upper()}).encode()


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.update(path=self.path, metadata=self.headers.get("Metadata"), report=body["report"])
            out = json.dumps({"quote": base64.urlsafe_b64encode(seen["quote"]).decode()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LAYERSEAL_AZ_IMDS", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _AnyTdQuote:
    """Stands in for the TDX verifier where the TD quote had to be altered (see below)."""

    tee = "tdx"

    def verify(self, evidence: bytes, expected: bytes) -> Claims:
        quote = tdx.parse_quote(tdx.quote_bytes(evidence))
        return tdx.claims_of(quote, "", "unknown")


def test_tdx_vtpm_evidence(tpm: tuple[str, Path], imds: dict[str, Any]) -> None:
    tcti, _ = tpm
    key = ak_public(tpm)
    captured_rd = tdx.parse_quote(TD_QUOTE).td.report_data
    hcl = _hcl_tdx(_var_data(key, RD), captured_rd)
    imds["quote"] = TD_QUOTE
    # the init-data digest in PCR 8, as the Azure/CoCo guest extends it
    swtpm.tool(tcti, "tpm2_pcrextend", f"8:sha256={hashlib.sha256(INIT_DATA.encode()).hexdigest()}")
    evidence = vtpm.VtpmAttester("az-tdx-vtpm", tcti).evidence(RD, hcl=hcl)
    assert imds["path"] == "/acc/tdquote" and imds["metadata"] == "true"
    assert base64.urlsafe_b64decode(imds["report"] + "==")[128:192] == captured_rd  # the TD report sent
    raw = json.dumps(evidence).encode()

    # the real verifier: the captured TD quote verifies, then does not bind this var data
    real = az_tdx_vtpm.AzTdxVtpmVerifier(
        trust.tdx_verifier(clock=lambda: datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))
    )
    with pytest.raises(DeniedError, match=r"^az-tdx-vtpm hcl var data binding: expected SHA-256"):
        real.verify(raw, RD)

    # past the TD quote (altered to bind the var data, so its signature no longer holds and
    # its checks are skipped), every vTPM check runs on swtpm's real quote
    bound = hashlib.sha256(hcl[az_snp_vtpm.HCL_VAR_DATA_OFFSET :]).digest() + bytes(32)
    altered = TD_QUOTE[: 48 + 520] + bound + TD_QUOTE[48 + 584 :]
    hcl2 = hcl[:0x20] + bytes(128) + bound + hcl[0x20 + 192 :]
    ev2 = dict(evidence, hcl_report=base64.urlsafe_b64encode(hcl2).decode(), td_quote=list(altered))
    stand_in = az_tdx_vtpm.AzTdxVtpmVerifier(_AnyTdQuote())
    claims = stand_in.verify(json.dumps(ev2).encode(), RD)
    assert claims.tee == "az-tdx-vtpm" and claims.details["report_data"] == RD.hex()
    assert len(claims.details["pcrs"]) == 24
    init = {"format": "toml", "body": INIT_DATA}
    with_init = rcar.verify(
        "az-tdx-vtpm",
        json.dumps(ev2).encode(),
        nonce=NONCE,
        tee_pubkey=JWK,
        verifier_for=lambda _: stand_in,
        init_data=init,
    )
    assert with_init.init_data is not None and with_init.init_data["digest"].endswith(
        hashlib.sha256(INIT_DATA.encode()).hexdigest()
    )
    other = {"format": "toml", "body": INIT_DATA.replace("allow", "deny")}
    with pytest.raises(DeniedError, match=r"^az-tdx-vtpm PCR8: expected the init-data digest"):
        rcar.verify(
            "az-tdx-vtpm",
            json.dumps(ev2).encode(),
            nonce=NONCE,
            tee_pubkey=JWK,
            verifier_for=lambda _: stand_in,
            init_data=other,
        )
    with pytest.raises(DeniedError, match=r"^az-tdx-vtpm tpm quote extraData: expected the report data"):
        stand_in.verify(json.dumps(ev2).encode(), bytes(64))
    with pytest.raises(
        DeniedError, match=r"^az-tdx-vtpm td quote: expected the quote of the HCL's TD report"
    ):
        stand_in.verify(json.dumps(dict(ev2, hcl_report=evidence["hcl_report"])).encode(), RD)
