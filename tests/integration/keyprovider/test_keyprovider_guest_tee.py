"""The keyprovider's keyunwrap inside an SNP guest (configfs-tsm faked with FUSE, serving a
real captured report): it attests with the guest's evidence and the broker refuses it at
the report-data binding, naming the check, in one line."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from integration.keyprovider.test_keyprovider_live import (
    UNWRAP_CAPTURE,
    World,
    run_kp,
    unwrap_flags,
    with_annotation,
    world,
    wrap_captured,
)
from layerseal.attest import snp_certs
from support.fake_tee import FakeTsm, mounted

__all__ = ["world"]  # the broker fixture, shared in shape with the keyprovider's live tests

DATA = Path(__file__).resolve().parents[2] / "data" / "tee" / "snp"
MILAN = x509.load_pem_x509_certificates((DATA / "milan_ask_ark_asvk.pem").read_bytes())
TABLE = snp_certs.build_table(
    [("VCEK", (DATA / "test-vcek.der").read_bytes())]
    + [(k, c.public_bytes(serialization.Encoding.DER)) for k, c in zip(("ASK", "ARK"), MILAN, strict=False)]
)


def test_keyunwrap_in_an_snp_guest_reaches_the_brokers_binding(world: World, tmp_path: Path) -> None:
    packet = wrap_captured(world)
    served: list[bytes] = []

    def reporter(inblob: bytes, level: int) -> tuple[bytes, bytes | None]:
        served.append(inblob)
        return (DATA / "test-report.bin").read_bytes(), TABLE

    with mounted(FakeTsm("sev_guest", reporter), tmp_path / "root/sys/kernel/config/tsm"):
        done = run_kp(
            [*unwrap_flags(world, tmp_path / "cache"), "--tee", "auto"],
            with_annotation(UNWRAP_CAPTURE, packet),
            env={"LAYERSEAL_TEE_SYSROOT": str(tmp_path / "root")},
        )
    err = done.stderr.decode()
    assert done.returncode == 5, err
    assert err.count("\n") == 1 and "snp report data: expected SHA-384 of this session's nonce" in err
    assert len(served) == 1 and len(served[0]) == 64
