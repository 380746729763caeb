"""A real containerd decrypts layerseal and skopeo images with ``layerseal containerd decode``.

One containerd (Debian's, as root) runs on a private socket, state and root directory
with the stanza ``layerseal containerd config`` prints; images go through the real
docker-registry, keys come from a keys directory (JWE) or a real broker attesting the
sim TEE.  Each test uses its own containerd namespace, so every pull is a fresh one
(snapshots are per namespace) and runs the processor again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.images import make_busybox_image, make_keys
from helpers.registry import registry_manifest, skopeo_copy
from integration.broker.brokerproc import BrokerProcess, start_sim_tenant_broker
from layerseal.kbs.client import PublisherClient
from layerseal.kbs.packets import ResourcePath
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration

LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SNAPSHOTTER = "native"  # works in any environment (overlayfs may be unavailable in nested containers)
MESSAGE = "hello from the enclave"
KEYS = "org.opencontainers.image.enc.keys."


@dataclass
class World:
    workdir: Path
    socket: Path
    root: Path
    containerd: subprocess.Popen[bytes]
    log: Path
    broker: BrokerProcess
    admin: PublisherClient
    acme: PublisherClient
    token: str
    registry: RegistryServer
    jwe_public: Path
    config_text: str

    def ctr(self, ns: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", ns, *args], capture_output=True, text=True, timeout=timeout
        )

    def pull(self, ns: str, ref: str) -> subprocess.CompletedProcess[str]:
        return self.ctr(ns, "image", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)

    def run(self, ns: str, ref: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        cid = f"ls-{uuid.uuid4().hex[:10]}"
        return self.ctr(ns, "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, cid, *cmd)

    def snapshots(self, ns: str) -> list[str]:
        r = self.ctr(ns, "snapshots", "--snapshotter", SNAPSHOTTER, "ls")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()[1:]

    def attestations(self) -> int:
        return sum(1 for e in self.admin.audit() if e["action"] == "attest" and e["decision"] == "ok")


def _wait_for_socket(proc: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"containerd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if socket.exists():
            r = subprocess.run(["ctr", "-a", str(socket), "version"], capture_output=True, timeout=30)
            if r.returncode == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"containerd did not answer on {socket}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "skopeo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run 'make test', which installs the Debian packages")
    if os.geteuid() != 0:
        pytest.skip("containerd runs as root here; a rootless containerd is not exercised")
    # short path: the socket path must fit in sun_path (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix="ls-ctd-"))
    tenant = start_sim_tenant_broker(workdir)
    broker, admin, acme, token, platform = (
        tenant.broker,
        tenant.admin,
        tenant.acme,
        tenant.token,
        tenant.platform,
    )
    keys_dir = workdir / "keys"
    pair = make_keys(workdir / "jwe", "ec256")
    keys_dir.mkdir(mode=0o700)
    shutil.copy(pair.private, keys_dir / "node.key")
    registry = RegistryServer(workdir / "registry").start()

    root, state, socket = workdir / "root", workdir / "state", workdir / "ctd.sock"
    stanza = subprocess.run(
        [
            *LAYERSEAL,
            "containerd",
            "config",
            "--module",
            "--containerd-root",
            str(root),
            "--decryption-keys-path",
            str(keys_dir),
            "--kbs",
            broker.url,
            "--sim-platform",
            str(platform),
            "--cache-dir",
            str(workdir / "tokens"),
            "--spool-dir",
            str(workdir / "spool"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = workdir / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root}"\n'
        f'state = "{state}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{socket}"\n'
        "[ttrpc]\n"
        f'  address = "{socket}.ttrpc"\n'
        "[debug]\n"
        '  address = ""\n'
        "[metrics]\n"
        '  address = ""\n'
        '[plugins."io.containerd.internal.v1.opt"]\n'
        f'  path = "{workdir / "opt"}"\n' + stanza
    )
    log = workdir / "containerd.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(proc, socket, log)
        yield World(
            workdir, socket, root, proc, log, broker, admin, acme, token, registry, pair.public, stanza
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        registry.stop()
        tenant.close()
        shutil.rmtree(workdir, ignore_errors=True)


def namespace() -> str:
    return f"ls-{uuid.uuid4().hex[:8]}"


def publish(w: World, repo: str, *recipients: str) -> str:
    """Build the busybox image (gzip, zstd, gzip layers) and push it encrypted with ``layerseal copy``."""
    src = w.workdir / f"src-{uuid.uuid4().hex[:6]}"
    make_busybox_image(f"oci:{src}:v1", extra_layers=2)
    flags = ["copy", "-q", "--dest-tls-verify=false"]
    for r in recipients:
        flags += ["--encryption-key", r]
    if any(r.startswith("kbs:") for r in recipients):
        flags += ["--kbs-token", w.token]
    r = subprocess.run(
        [*LAYERSEAL, *flags, f"oci:{src}:v1", f"docker://{w.registry.host}/{repo}:v1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return f"{w.registry.host}/{repo}:v1"


def test_config_prints_every_encrypted_layer_type(world: World) -> None:
    text = world.config_text
    for kind in ("tar+gzip", "tar+zstd", "tar"):
        assert f'accepts = ["application/vnd.oci.image.layer.v1.{kind}+encrypted"]' in text
        assert f'returns = "application/vnd.oci.image.layer.v1.{kind}"' in text
    assert 'key_model = "node"' in text


def test_jwe_image_from_layerseal_copy_pulls_and_runs(world: World) -> None:
    ref = publish(world, "acme/jwe", f"jwe:{world.jwe_public}")
    layers = registry_manifest(world.registry, "acme/jwe", "v1")["layers"]
    assert all(d["mediaType"].endswith("+encrypted") for d in layers)  # type: ignore[attr-defined]
    ns = namespace()
    r = world.pull(ns, ref)
    assert r.returncode == 0, r.stderr + world.log.read_text()[-3000:]
    r = world.run(ns, ref)
    assert (r.returncode, r.stdout.strip()) == (0, MESSAGE), r.stderr
    r = world.run(ns, ref, "/bin/cat", "/data/file0.txt")  # the zstd layer
    assert (r.returncode, r.stdout) == (0, "layer 1\n"), r.stderr
    assert len(world.snapshots(ns)) == 3
    assert not any((world.workdir / "spool").iterdir())  # spools are anonymous files


def test_broker_keys_one_attestation_per_pull_and_revocation(world: World) -> None:
    ref = publish(world, "acme/kbs", f"kbs:{world.broker.url}")
    layers = registry_manifest(world.registry, "acme/kbs", "v1")["layers"]
    for d in layers:  # type: ignore[attr-defined]
        assert set(k for k in d["annotations"] if ".enc.keys." in k) == {
            "org.opencontainers.image.enc.keys.provider.attestation-agent"
        }
    before = world.attestations()
    ns = namespace()
    r = world.pull(ns, ref)
    assert r.returncode == 0, r.stderr + world.log.read_text()[-3000:]
    # three layers, three processes: one attestation shared through the token cache
    assert world.attestations() - before == 1
    r = world.run(ns, ref)
    assert (r.returncode, r.stdout.strip()) == (0, MESSAGE), r.stderr

    keys = world.acme.list_keys("acme/kbs")
    assert len(keys) == 3
    packet = layers[-1]["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"]  # type: ignore[index]
    kid = json.loads(base64.b64decode(packet))["kid"]
    world.acme.revoke_key(ResourcePath.parse(kid).key_id)
    # the image already unpacked keeps running (containerd reuses its snapshots: see docs)...
    r = world.run(ns, ref)
    assert r.returncode == 0, r.stderr
    # ...but a fresh pull needs the key again and is refused
    ns2 = namespace()
    r = world.pull(ns2, ref)
    assert r.returncode != 0
    # containerd reports the processor's line (see docs/containerd.md: --linger)
    assert "layerseal containerd decode: keyunwrap kbs:///" in r.stderr, r.stderr
    assert "expected an unrevoked key, seen revoked" in r.stderr, r.stderr
    r = world.run(ns2, ref)
    assert r.returncode != 0  # nothing runnable was left behind


def _push_blob(reg: RegistryServer, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = reg.url + location
    sep = "&" if "?" in location else "?"
    req = urllib.request.Request(
        f"{location}{sep}digest={digest}",
        method="PUT",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req):
        pass
    return digest


def _push_manifest(reg: RegistryServer, repo: str, tag: str, manifest: dict[str, object]) -> None:
    body = json.dumps(manifest).encode()
    req = urllib.request.Request(
        f"{reg.url}/v2/{repo}/manifests/{tag}",
        method="PUT",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    with urllib.request.urlopen(req):
        pass


def test_tampered_layer_fails_the_pull_and_leaves_no_snapshot(world: World) -> None:
    """The registry serves a bit-flipped ciphertext under a manifest rewritten to its digest.

    containerd's own digest checks pass (the manifest names the altered blob); only the
    HMAC in the layer's annotations catches it, before any plaintext reaches containerd.
    """
    ref = publish(world, "acme/tamper", f"jwe:{world.jwe_public}")
    manifest = registry_manifest(world.registry, "acme/tamper", "v1")
    layer = manifest["layers"][0]  # type: ignore[index]
    with urllib.request.urlopen(f"{world.registry.url}/v2/acme/tamper/blobs/{layer['digest']}") as resp:
        blob = bytearray(resp.read())
    blob[len(blob) // 2] ^= 0x01
    layer["digest"] = _push_blob(world.registry, "acme/tamper", bytes(blob))
    _push_manifest(world.registry, "acme/tamper", "evil", manifest)
    ns = namespace()
    r = world.pull(ns, ref.replace(":v1", ":evil"))
    assert r.returncode != 0
    assert "layerseal containerd decode: layer sha256:" in r.stderr, r.stderr
    assert "HMAC mismatch" in r.stderr and "nothing was written to stdout" in r.stderr, r.stderr
    assert world.snapshots(ns) == []


def test_skopeo_encrypted_jwe_image_pulls_and_runs(world: World) -> None:
    src = world.workdir / "skopeo-src"
    make_busybox_image(f"oci:{src}:v1", message="hello from skopeo", extra_layers=2)
    ref = f"{world.registry.host}/acme/skopeo:v1"
    skopeo_copy(
        "--dest-tls-verify=false",
        "--encryption-key",
        f"jwe:{world.jwe_public}",
        f"oci:{src}:v1",
        f"docker://{ref}",
    )
    layers = registry_manifest(world.registry, "acme/skopeo", "v1")["layers"]
    assert all(d["mediaType"].endswith("+encrypted") for d in layers)  # type: ignore[attr-defined]
    ns = namespace()
    r = world.pull(ns, ref)
    assert r.returncode == 0, r.stderr + world.log.read_text()[-3000:]
    r = world.run(ns, ref)
    assert (r.returncode, r.stdout.strip()) == (0, "hello from skopeo"), r.stderr


def test_packets_under_the_keyprovider_annotation_name(world: World) -> None:
    """Packets filed under ``enc.keys.provider.layerseal`` (what ocicrypt writes for the keyprovider).

    Debian 12's skopeo cannot use keyproviders (docs/keyprovider.md), so the manifest of a
    ``layerseal copy`` image is re-pushed with its packets moved to that annotation: the
    packet bytes are the same ones the keyprovider returns to ocicrypt.
    """
    publish(world, "acme/kp", f"kbs:{world.broker.url}")
    manifest = registry_manifest(world.registry, "acme/kp", "v1")
    for d in manifest["layers"]:  # type: ignore[attr-defined]
        notes = d["annotations"]
        notes[f"{KEYS}provider.layerseal"] = notes.pop(f"{KEYS}provider.attestation-agent")
    _push_manifest(world.registry, "acme/kp", "kp", manifest)
    ref = f"{world.registry.host}/acme/kp:kp"
    ns = namespace()
    r = world.pull(ns, ref)
    assert r.returncode == 0, r.stderr + world.log.read_text()[-3000:]
    r = world.run(ns, ref)
    assert (r.returncode, r.stdout.strip()) == (0, MESSAGE), r.stderr
