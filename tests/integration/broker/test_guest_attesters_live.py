"""`layerseal pull --tee snp|tdx|sgx` against a real broker, the guest interfaces faked.

The engine runs as its own process with LAYERSEAL_TEE_SYSROOT pointing at FUSE fakes of
configfs-tsm and Gramine's /dev/attestation that serve real captured reports.  The broker
verifies them as a CoCo guest's (chain, signatures) and refuses them at the report-data
binding, because a captured report binds another session's nonce: exit 5, the check
named, no rootfs written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Deployment, deploy
from helpers.images import make_busybox_image
from layerseal.attest import snp_certs
from layerseal.cli.main import main
from support.fake_tee import FakeGramine, FakeTsm, Reporter, mounted
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
DATA = Path(__file__).parents[2] / "data" / "tee"
MILAN = x509.load_pem_x509_certificates((DATA / "snp" / "milan_ask_ark_asvk.pem").read_bytes())
TABLE = snp_certs.build_table(
    [("VCEK", (DATA / "snp" / "test-vcek.der").read_bytes())]
    + [
        (kind, c.public_bytes(serialization.Encoding.DER))
        for kind, c in zip(("ASK", "ARK"), MILAN, strict=False)
    ]
)
SERVED: dict[str, tuple[str, Reporter]] = {
    "snp": ("sev_guest", lambda inblob, level: ((DATA / "snp" / "test-report.bin").read_bytes(), TABLE)),
    "tdx": ("tdx_guest", lambda inblob, level: ((DATA / "tdx" / "tdx_quote_4.dat").read_bytes(), None)),
}


@pytest.fixture
def world(tmp_path: Path, sim_platform_dir: Path) -> Iterator[tuple[Deployment, str]]:
    d = deploy(str(tmp_path / "broker.db"), tmp_path, sim_platform_dir)
    token = d.acme._headers["Authorization"].removeprefix("Bearer ")
    try:
        with RegistryServer(tmp_path / "registry") as reg:
            make_busybox_image(f"oci:{tmp_path}/img:v1", extra_layers=1)
            ref = f"docker://{reg.host}/acme/app:v1"
            args = ["copy", "-q", "--dest-tls-verify=false", "--encryption-key", f"kbs:{d.url}"]
            assert main([*args, "--kbs-token", token, f"oci:{tmp_path}/img:v1", ref]) == 0
            yield d, ref
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


def pull(
    d: Deployment, tmp_path: Path, ref: str, sysroot: Path, tee: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "layerseal.cli.main", "pull", "--src-tls-verify=false", "--kbs", d.url]
    cmd += ["--tee", tee, "--store", str(tmp_path / "store"), "--rootfs", str(tmp_path / "rootfs"), ref]
    env = {**os.environ, "LAYERSEAL_TEE_SYSROOT": str(sysroot)}
    env.pop("LAYERSEAL_SIM_PLATFORM", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_configfs_guest_reaches_the_brokers_binding_check(
    world: tuple[Deployment, str], tmp_path: Path, tee: str
) -> None:
    d, ref = world
    provider, reporter = SERVED[tee]
    fake = FakeTsm(provider, reporter)
    with mounted(fake, tmp_path / "root/sys/kernel/config/tsm"):
        r = pull(d, tmp_path, ref, tmp_path / "root", "auto")
    assert r.returncode == 5, r.stderr
    assert f"{tee} report data: expected SHA-384 of this session's nonce and tee-pubkey" in r.stderr
    # one attestation per try: the engine retries each layer's key alone after a refused batch
    assert fake.reports_made >= 1 and fake.entries == {}
    assert not (tmp_path / "rootfs").exists()


def test_gramine_guest_reaches_the_brokers_binding_check(
    world: tuple[Deployment, str], tmp_path: Path
) -> None:
    d, ref = world
    fake = FakeGramine((DATA / "sgx" / "quote-v3.dat").read_bytes())
    with mounted(fake, tmp_path / "root/dev/attestation"):
        r = pull(d, tmp_path, ref, tmp_path / "root", "sgx")
    assert r.returncode == 5, r.stderr
    assert "sgx report data: expected SHA-384 of this session's nonce and tee-pubkey" in r.stderr
    assert fake.quotes_made >= 1
    assert not (tmp_path / "rootfs").exists()
