"""Guest attesters against fake kernel interfaces that serve real captured reports.

configfs-tsm and Gramine's /dev/attestation are real FUSE file systems behaving as the
kernel and Gramine do (tests/support/fake_tee.py); /dev/sev-guest is a device file whose
ioctls a fake kernel side answers.  The reports are real, captured elsewhere, so they bind
another nonce: each attester's evidence must verify up to the report-data binding and be
refused there.  Nothing is forged.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from layerseal.attest import attesters, binding, rcar, sgx, snp, snp_certs, tdx, trust
from layerseal.attest.attesters import Paths, detect, make_attester
from layerseal.attest.claims import Verifier
from layerseal.attest.configfs_tsm import TsmAttester
from layerseal.attest.gramine import GramineAttester
from layerseal.attest.sev_guest import SevGuestAttester
from layerseal.cli.main import main
from layerseal.errors import BadInputError, DeniedError, NotFoundError, TransportError
from support.fake_tee import FakeGramine, FakeSevGuest, FakeTsm, mounted

DATA = Path(__file__).parents[2] / "data" / "tee"
SNP_REPORT = (DATA / "snp" / "test-report.bin").read_bytes()
VCEK = (DATA / "snp" / "test-vcek.der").read_bytes()
MILAN = x509.load_pem_x509_certificates((DATA / "snp" / "milan_ask_ark_asvk.pem").read_bytes())
TDX_QUOTE = (DATA / "tdx" / "tdx_quote_4.dat").read_bytes()
SGX_QUOTE = (DATA / "sgx" / "quote-v3.dat").read_bytes()
TDX_CAPTURED = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
SGX_CAPTURED = datetime.datetime(2023, 5, 1, tzinfo=datetime.UTC)

NONCE = "bm9uY2Ugb2YgdGhpcyBzZXNzaW9u"
JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "BBBB"}
RD = binding.report_data(NONCE, JWK)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# the host's certificate table: VCEK, ASK, ARK, as a Milan host serves them
SNP_TABLE = snp_certs.build_table([("VCEK", VCEK), ("ASK", der(MILAN[0])), ("ARK", der(MILAN[1]))])


def verifiers(tee: str) -> Verifier:
    if tee == "tdx":
        return trust.tdx_verifier(clock=lambda: TDX_CAPTURED)
    if tee == "sgx":
        return trust.sgx_verifier(clock=lambda: SGX_CAPTURED)
    return trust.snp_verifier()


def as_bytes(evidence: dict[str, Any]) -> bytes:
    return json.dumps(evidence).encode()


def paths_under(root: Path) -> Paths:
    return Paths(
        tsm=root / "sys/kernel/config/tsm",
        sev_guest=root / "dev/sev-guest",
        tdx_guest=root / "dev/tdx_guest",
        attestation=root / "dev/attestation",
        tpm_device=root / "dev/tpmrm0",
        tpm_tcti="device:" + str(root / "dev/tpmrm0"),
    )


class Served:
    def __init__(self) -> None:
        self.inblobs: list[bytes] = []
        self.levels: list[int] = []

    def snp(self, inblob: bytes, privlevel: int) -> tuple[bytes, bytes | None]:
        self.inblobs.append(inblob)
        self.levels.append(privlevel)
        return SNP_REPORT, SNP_TABLE

    def tdx(self, inblob: bytes, privlevel: int) -> tuple[bytes, bytes | None]:
        self.inblobs.append(inblob)
        return TDX_QUOTE, None


@pytest.fixture
def sysroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LAYERSEAL_TEE_SYSROOT", str(tmp_path))
    monkeypatch.delenv("LAYERSEAL_TPM_TCTI", raising=False)
    return tmp_path


@pytest.fixture
def snp_tsm(sysroot: Path) -> Iterator[tuple[FakeTsm, Served]]:
    served = Served()
    fake = FakeTsm("sev_guest", served.snp)
    with mounted(fake, sysroot / "sys/kernel/config/tsm"):
        yield fake, served


@pytest.fixture
def tdx_tsm(sysroot: Path) -> Iterator[tuple[FakeTsm, Served]]:
    served = Served()
    fake = FakeTsm("tdx_guest", served.tdx)
    with mounted(fake, sysroot / "sys/kernel/config/tsm"):
        yield fake, served


# ---------------------------------------------------------------------------- configfs-tsm


def test_snp_configfs_evidence_verifies_up_to_the_binding(
    snp_tsm: tuple[FakeTsm, Served], sysroot: Path
) -> None:
    fake, served = snp_tsm
    attester = make_attester(None, None)  # auto: configfs-tsm, provider sev_guest
    assert isinstance(attester, TsmAttester) and attester.tee == "snp"
    evidence = attester.evidence(RD)
    assert served.inblobs == [RD]  # the exact 64 bytes the broker will expect
    assert fake.entries == {}  # the entry was removed
    kinds = [c["cert_type"] for c in evidence["cert_chain"]]
    assert kinds == ["VCEK", "ASK", "ARK"]
    with pytest.raises(DeniedError, match=r"^snp report data: expected"):
        rcar.verify("snp", as_bytes(evidence), nonce=NONCE, tee_pubkey=JWK, verifier_for=verifiers)
    # everything before the binding holds: with the captured report's own data it verifies
    claims = verifiers("snp").verify(as_bytes(evidence), SNP_REPORT[0x50:0x90])
    assert claims.tee == "snp"


def test_tdx_configfs_evidence_verifies_up_to_the_binding(tdx_tsm: tuple[FakeTsm, Served]) -> None:
    fake, served = tdx_tsm
    attester = make_attester("tdx", None)
    assert fake.provider == "tdx_guest"
    evidence = attester.evidence(RD)
    assert served.inblobs == [RD]
    assert base64.b64decode(evidence["quote"]) == TDX_QUOTE
    with pytest.raises(DeniedError, match=r"^tdx report data: expected"):
        rcar.verify("tdx", as_bytes(evidence), nonce=NONCE, tee_pubkey=JWK, verifier_for=verifiers)
    captured_rd = tdx.parse_quote(TDX_QUOTE).td.report_data
    assert verifiers("tdx").verify(as_bytes(evidence), captured_rd).tee == "tdx"


def test_a_concurrent_writer_is_detected_and_the_report_retaken(snp_tsm: tuple[FakeTsm, Served]) -> None:
    fake, served = snp_tsm
    fake.concurrent_writes = 1
    attester = make_attester("snp", None)
    attester.evidence(RD)
    assert fake.concurrent_writes == 0
    assert served.inblobs[-1] == RD  # the report kept is the one made over our inblob
    assert len(served.inblobs) == 2  # the first (another writer's data) was thrown away


def test_a_writer_that_never_stops_is_an_error(snp_tsm: tuple[FakeTsm, Served]) -> None:
    fake, _ = snp_tsm
    fake.concurrent_writes = 10
    with pytest.raises(
        TransportError, match=r"configfs-tsm generation .*expected no other writer during 3 attempts"
    ):
        make_attester("snp", None).evidence(RD)
    assert fake.entries == {}


def test_provider_other_than_asked_is_refused(tdx_tsm: tuple[FakeTsm, Served], sysroot: Path) -> None:
    with pytest.raises(
        BadInputError, match=r"configfs-tsm provider: expected snp \(sev_guest\), seen 'tdx_guest'"
    ):
        TsmAttester("snp", root=paths_under(sysroot).tsm).evidence(RD)


def test_privlevel_below_the_floor_is_refused_by_the_kernel(sysroot: Path) -> None:
    fake = FakeTsm("sev_guest", Served().snp, privlevel_floor=2)
    with mounted(fake, sysroot / "sys/kernel/config/tsm") as root:
        with pytest.raises(
            TransportError, match=r"configfs-tsm privlevel .*: expected writable, seen Invalid argument"
        ):
            TsmAttester("snp", root=root, privlevel=1).evidence(RD)
        assert fake.entries == {}  # removed although the request failed
        ok = TsmAttester("snp", root=root, privlevel=2).evidence(RD)
        assert len(base64.b64decode(ok["report"])) == snp.REPORT_SIZE


def test_privlevel_from_the_environment(
    snp_tsm: tuple[FakeTsm, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, served = snp_tsm
    monkeypatch.setenv("LAYERSEAL_TSM_PRIVLEVEL", "2")
    attester = make_attester("snp", None)
    assert isinstance(attester, TsmAttester) and attester.privlevel == 2
    attester.evidence(RD)
    assert served.levels == [2]  # the report was made at the VMPL asked for
    monkeypatch.setenv("LAYERSEAL_TSM_PRIVLEVEL", "9")
    with pytest.raises(BadInputError, match=r"LAYERSEAL_TSM_PRIVLEVEL: expected 0..3, seen '9'"):
        make_attester("snp", None)


def test_wrong_report_data_size_is_refused_before_any_write(snp_tsm: tuple[FakeTsm, Served]) -> None:
    _, served = snp_tsm
    with pytest.raises(BadInputError, match=r"configfs-tsm inblob: expected 64 bytes, seen 32"):
        make_attester("snp", None).evidence(RD[:32])
    assert served.inblobs == []


# ---------------------------------------------------------------------------- Gramine


def test_gramine_sgx_evidence_verifies_up_to_the_binding(sysroot: Path) -> None:
    fake = FakeGramine(SGX_QUOTE)
    with mounted(fake, sysroot / "dev/attestation"):
        assert detect().tee == "sgx"
        attester = make_attester("auto", None)
        assert isinstance(attester, GramineAttester)
        evidence = attester.evidence(RD)
    assert fake.user_report_data == RD and fake.quotes_made == 1
    with pytest.raises(DeniedError, match=r"^sgx report data: expected"):
        rcar.verify("sgx", as_bytes(evidence), nonce=NONCE, tee_pubkey=JWK, verifier_for=verifiers)
    assert (
        verifiers("sgx").verify(as_bytes(evidence), sgx.parse_quote(SGX_QUOTE).body.report_data).tee == "sgx"
    )


def test_gramine_without_dcap_is_refused(sysroot: Path) -> None:
    refused = pytest.raises(BadInputError, match=r"sgx attestation type .*: expected 'dcap', seen 'epid'")
    with mounted(FakeGramine(SGX_QUOTE, attestation_type="epid"), sysroot / "dev/attestation"), refused:
        make_attester("sgx", None).evidence(RD)


# ---------------------------------------------------------------------------- /dev/sev-guest


@pytest.fixture
def sev_device(sysroot: Path) -> Path:
    device = sysroot / "dev" / "sev-guest"
    device.parent.mkdir(parents=True)
    device.write_bytes(b"")
    return device


def test_sev_guest_ext_report_with_a_host_table_bigger_than_the_first_buffer(sev_device: Path) -> None:
    padded = SNP_TABLE + bytes(5 * 4096 - len(SNP_TABLE))  # a host may hand out five pages
    kernel = FakeSevGuest(SNP_REPORT, padded)
    evidence = SevGuestAttester(sev_device, ioctl=kernel).evidence(RD)
    assert [c[0] for c in kernel.calls] == ["ext", "ext"]
    assert kernel.calls[1][1] == 5 * 4096  # retried with the size the kernel asked for
    assert kernel.user_data == [RD]
    with pytest.raises(DeniedError, match=r"^snp report data: expected"):
        rcar.verify("snp", as_bytes(evidence), nonce=NONCE, tee_pubkey=JWK, verifier_for=verifiers)
    assert verifiers("snp").verify(as_bytes(evidence), SNP_REPORT[0x50:0x90]).tee == "snp"


def test_sev_guest_without_ext_report_falls_back_to_the_plain_report(sev_device: Path) -> None:
    kernel = FakeSevGuest(SNP_REPORT, SNP_TABLE, extended=False)
    evidence = SevGuestAttester(sev_device, ioctl=kernel).evidence(RD)
    assert [c[0] for c in kernel.calls] == ["plain"] and evidence["cert_chain"] == []
    assert base64.b64decode(evidence["report"]) == SNP_REPORT


def test_sev_guest_firmware_error_is_reported(sev_device: Path) -> None:
    kernel = FakeSevGuest(SNP_REPORT, SNP_TABLE)
    with pytest.raises(TransportError, match=r"SNP_GET_EXT_REPORT: expected a report, seen .*fw_error 0x16"):
        SevGuestAttester(sev_device, vmpl=7, ioctl=kernel).evidence(RD)


def test_sev_guest_through_the_real_ioctl_on_a_plain_file_fails_cleanly(sev_device: Path) -> None:
    # the kernel answers ENOTTY for a regular file to both requests
    with pytest.raises(TransportError, match=r"sev-guest .* SNP_GET_REPORT: expected a report, seen"):
        make_attester("snp", None).evidence(RD)


# ---------------------------------------------------------------------------- detection


def test_detection_falls_back_to_sim_and_says_why(sysroot: Path) -> None:
    found = detect()
    assert (found.tee, found.why) == ("sim", "no TEE interface found")
    assert {p.interface for p in found.probes} == {
        "gramine",
        "azure-vtpm",
        "configfs-tsm",
        "sev-guest",
        "tdx_guest",
    }
    assert not any(p.present for p in found.probes)


def test_detection_prefers_configfs_and_names_the_provider(
    tdx_tsm: tuple[FakeTsm, Served], sysroot: Path
) -> None:
    (sysroot / "dev").mkdir()
    (sysroot / "dev" / "sev-guest").write_bytes(b"")
    found = detect()
    assert found.tee == "tdx" and "provider 'tdx_guest'" in found.why
    assert tdx_tsm[0].entries == {}


def test_tdx_device_without_configfs_names_what_is_left_out(sysroot: Path) -> None:
    (sysroot / "dev").mkdir()
    (sysroot / "dev" / "tdx_guest").write_bytes(b"")
    assert detect().tee == "tdx"
    with pytest.raises(NotFoundError, match=r"quote generation service over vsock is not implemented"):
        make_attester(None, None)


def test_unknown_tee_is_bad_input(sysroot: Path) -> None:
    with pytest.raises(BadInputError, match=r"tee: expected one of \['auto', 'snp'"):
        make_attester("sev", None)
    with pytest.raises(NotFoundError, match=r"snp: expected .*/report or .*sev-guest, seen neither"):
        make_attester("snp", None)
    assert attesters.TEE_CHOICES == ("auto", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx", "sim")


# ---------------------------------------------------------------------------- CLI


def test_tee_info_and_evidence(snp_tsm: tuple[FakeTsm, Served], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tee", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tee"] == "snp" and "sev_guest" in info["why"]
    assert main(["tee", "info"]) == 0
    assert capsys.readouterr().out.startswith("tee: snp (configfs-tsm provider 'sev_guest' (snp))")

    assert main(["tee", "evidence", "--nonce", NONCE]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tee"] == "snp" and set(out["runtime-data"]["tee-pubkey"]) >= {"kty", "crv", "x", "y"}
    assert "d" not in out["runtime-data"]["tee-pubkey"]  # no private key anywhere
    assert bytes.fromhex(out["report-data"]) == snp_tsm[1].inblobs[-1]
    assert bytes.fromhex(out["report-data"]) == binding.report_data(NONCE, out["runtime-data"]["tee-pubkey"])
    with pytest.raises(DeniedError, match=r"^snp report data"):
        rcar.verify(
            "snp",
            as_bytes(out["evidence"]),
            nonce=NONCE,
            tee_pubkey=out["runtime-data"]["tee-pubkey"],
            verifier_for=verifiers,
        )


def test_pull_flag_accepts_every_tee(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pull", "oci:/nonexistent:x", "--rootfs", "/nonexistent/r", "--tee", "sev"])
    assert "az-tdx-vtpm" in capsys.readouterr().err


# ---------------------------------------------------------------------------- /dev/tdx_guest


def test_td_report_ioctl_carries_the_report_data(sysroot: Path) -> None:
    from layerseal.attest import tdx_guest

    device = sysroot / "dev" / "tdx_guest"
    device.parent.mkdir(parents=True)
    device.write_bytes(b"")
    mrtd = tdx.parse_quote(TDX_QUOTE).td.mr_td
    seen: list[int] = []

    def kernel(fd: int, request: int, req: tdx_guest.TdxReportReq) -> int:
        # the TDX module's TDG.MR.REPORT: REPORTMACSTRUCT (report data at 128), TEE_TCB_INFO, TDINFO
        seen.append(request)
        report = bytearray(1024)
        report[128:192] = bytes(req.reportdata)
        report[tdx_guest.MRTD] = mrtd
        req.tdreport[:] = list(report)
        return 0

    report = tdx_guest.td_report(RD, device, ioctl=kernel)
    assert seen == [0xC4405401]  # _IOWR('T', 1, struct tdx_report_req)
    assert report[128:192] == RD and report[tdx_guest.MRTD] == mrtd
    with pytest.raises(TransportError, match=r"TDX_CMD_GET_REPORT0: expected a TD report, seen"):
        tdx_guest.td_report(RD, device)  # the real ioctl on a regular file
    probe = next(p for p in detect().probes if p.interface == "tdx_guest")
    assert probe.present and "TDX_CMD_GET_REPORT0 fails" in probe.detail


def test_tee_evidence_of_the_sim_platform_passes_the_brokers_binding(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The positive half of the binding: evidence whose signer takes our report data verifies."""
    from layerseal.attest.sim import SimVerifier
    from layerseal.attest.sim_platform import init_platform
    from layerseal.attest.x509util import load_certificate

    platform = tmp_path / "sim"
    init_platform(platform)
    assert main(["tee", "evidence", "--tee", "sim", "--sim-platform", str(platform), "--nonce", NONCE]) == 0
    out = json.loads(capsys.readouterr().out)
    trusted = SimVerifier([load_certificate((platform / "platform-cert.pem").read_bytes())])
    claims = rcar.verify(
        "sim",
        as_bytes(out["evidence"]),
        nonce=NONCE,
        tee_pubkey=out["runtime-data"]["tee-pubkey"],
        verifier_for=lambda _: trusted,
    )
    assert claims.tee == "sim"
    with pytest.raises(DeniedError):
        rcar.verify(
            "sim", as_bytes(out["evidence"]), nonce="other", tee_pubkey=JWK, verifier_for=lambda _: trusted
        )
