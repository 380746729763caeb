"""``make demo``: the whole flow on embedded defaults, printed step by step.

1. A key broker starts in the background (SQLite) and a local docker-registry on loopback.
2. A simulated TEE platform is created and registered; its measurement is approved.
3. A small runnable image (static busybox + a script) is built and pushed, every layer
   encrypted with its own key created by the broker (``--encryption-key kbs:URL``).
4. Two engines pull it at once through one shared encrypted blob store: each blob is
   fetched once, keys are released in one attested batch per engine.
5. An enclave with an unapproved measurement is refused its keys.
6. ``layerseal run`` prints the container's message.

Everything lives in a temporary directory (``LAYERSEAL_DEMO_DIR`` keeps it) and every
server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.builder.scratch import LayerSpec, build_image
from layerseal.builder.tarlayer import FileEntry
from layerseal.crypto.keys import generate_key
from layerseal.errors import DeniedError
from layerseal.kbs.client import EnclaveClient, PublisherClient
from layerseal.layout.oci import LayoutDestination, LayoutReference

CLI = [sys.executable, "-m", "layerseal.cli.main"]
MESSAGE = "hello from inside the enclave: every layer had its own key"


def say(step: str, text: str) -> None:
    print(f"[{step:>8}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {url} exited early:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not come up")


@contextmanager
def background(cmd: list[str], url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(url, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def registry_config(root: Path, port: int) -> Path:
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'registry-data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return config


def static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[: 1 << 20]:
            return path
    raise SystemExit("demo: needs a static busybox (Debian package busybox-static; 'make demo' installs it)")


def build_demo_image(ref: str) -> None:
    busybox = static_busybox().read_bytes()
    base = (
        FileEntry("bin", kind="dir", mode=0o755),
        FileEntry("bin/busybox", busybox, 0o755),
        FileEntry("bin/sh", kind="symlink", target="busybox", mode=0o777),
        *(FileEntry(d, kind="dir", mode=0o755) for d in ("proc", "dev", "sys", "tmp", "etc")),
    )
    script = f"#!/bin/sh\necho '{MESSAGE}'\n".encode()
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        build_image(
            dst,
            [
                LayerSpec(base, "gzip", "base: static busybox"),
                LayerSpec((FileEntry("etc/motd", b"confidential\n"),), "zstd", "config"),
                LayerSpec((FileEntry("app/hello.sh", script, 0o755),), "gzip", "application"),
            ],
            cmd=("/app/hello.sh",),
        )
    finally:
        dst.close()


def run(work: Path) -> None:
    broker_port, registry_port = free_port(), free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    registry = f"127.0.0.1:{registry_port}"
    serve = [*CLI, "broker", "serve", "--db", str(work / "broker.db"), "--listen", f"127.0.0.1:{broker_port}"]
    serve += ["--master-key-file", str(work / "master.key"), "--admin-token-file", str(work / "admin.token")]
    reg_cmd = [
        shutil.which("docker-registry") or "docker-registry",
        "serve",
        str(registry_config(work, registry_port)),
    ]

    with (
        background(serve, f"{broker_url}/healthz", work / "broker.log"),
        background(reg_cmd, f"http://{registry}/v2/", work / "registry.log"),
    ):
        say("broker", f"key broker on {broker_url} (SQLite {work / 'broker.db'})")
        say("registry", f"docker-registry on {registry}")

        platform = init_platform(work / "sim-platform")
        admin = PublisherClient(broker_url, (work / "admin.token").read_text().strip())
        admin.register_platform(
            (work / "sim-platform" / "platform-cert.pem").read_bytes(), description="demo"
        )
        _, token = admin.create_token("demo", ["keys:write", "keys:read", "policy:write", "audit:read"])
        publisher = PublisherClient(broker_url, token)
        publisher.add_refvalues("allowed-measurements", [platform.measurement])
        say("tee", f"sim platform registered; approved measurement {platform.measurement[:16]}...")

        build_demo_image(f"oci:{work}/image:v1")
        ref = f"docker://{registry}/demo/app:v1"
        subprocess.run(
            [
                *CLI,
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--encryption-key",
                f"kbs:{broker_url}",
                "--kbs-token",
                token,
                f"oci:{work}/image:v1",
                ref,
            ],
            check=True,
        )
        for key in sorted(publisher.list_keys("demo/app"), key=lambda k: str(k["layer_digest"])):
            say("publish", f"layer {str(key['layer_digest'])[7:19]} -> broker key {key['kid']}")

        store = work / "shared-store"
        # what every engine run here shares: the broker, the simulated TEE, one blob store
        engine_flags = ["--src-tls-verify=false", "--kbs", broker_url]
        engine_flags += ["--sim-platform", str(work / "sim-platform"), "--store", str(store)]
        engines = [
            subprocess.Popen(
                [
                    *CLI,
                    "pull",
                    *engine_flags,
                    "--snapshots",
                    str(work / f"snapshots-{n}"),
                    ref,
                    "--rootfs",
                    str(work / f"rootfs-{n}"),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in (1, 2)
        ]
        total_fetched = 0
        for n, proc in enumerate(engines, 1):
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise SystemExit(f"demo: engine {n} failed")
            result = json.loads(out)
            fetched = sum(layer["fetched"] for layer in result["layers"])
            total_fetched += fetched
            say(
                f"engine {n}",
                f"{result['keysReleased']} layer keys in one attested batch; downloaded {fetched} of "
                f"{len(result['layers'])} blobs itself, decrypted and unpacked all of them",
            )
        say("store", f"{total_fetched} downloads in total for 2 engines: each blob fetched once")

        rogue = SimAttester(work / "sim-platform", measurement="ee" * 48)
        kids = [str(k["kid"]) for k in publisher.list_keys("demo/app")]
        with EnclaveClient(broker_url, rogue, generate_key("EC-P256")) as client:
            try:
                client.get_keys(kids)
                raise SystemExit("demo: an unapproved enclave got keys")
            except DeniedError as exc:
                say("denied", f"unapproved enclave refused: {str(exc)[:110]}")

        say("run", "layerseal run (runc) prints:")
        status = subprocess.run(
            [*CLI, "run", *engine_flags, ref],
            check=False,
        ).returncode
        if status != 0:
            raise SystemExit(f"demo: the container exited with {status}")
        audit = publisher.audit()
        say(
            "audit",
            f"{len(audit)} hash-chained audit entries; "
            f"{sum(e.get('action') == 'release' and e.get('decision') == 'ok' for e in audit)} releases, "
            f"{sum(e.get('decision') != 'ok' for e in audit)} denials",
        )
        admin.close()
        publisher.close()
    say("done", f"everything ran in {work}")


def main() -> int:
    keep = os.environ.get("LAYERSEAL_DEMO_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        run(Path(keep))
    else:
        with tempfile.TemporaryDirectory(prefix="layerseal-demo-") as d:
            run(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
