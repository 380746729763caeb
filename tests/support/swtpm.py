"""A real TPM 2.0 (swtpm, Debian package ``swtpm``) on 127.0.0.1, provisioned as Azure's vTPM is.

``azure_like(tcti, hcl)`` creates an endorsement key and an RSA-2048 attestation key
(RSASSA SHA-256, restricted signing) persisted at ``0x81000003``, defines NV index
``0x01400001`` holding the HCL report and ``0x01400002`` (64 bytes) for report data.
swtpm 0.7's NV indices hold at most 2048 bytes, less than an HCL report (2.6 KiB): the
caller stores what fits.  tpm2-tools run without a resource manager, so transient
objects are flushed after each step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

AK_HANDLE = 0x81000003
MAX_NV = 2048


def available() -> bool:
    return all(shutil.which(t) for t in ("swtpm", "tpm2_createak", "tpm2_quote"))


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with contextlib.suppress(OSError), socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no free port pair for swtpm")


@contextlib.contextmanager
def running(state: Path) -> Iterator[str]:
    """Start swtpm with its state in *state*; yields the TCTI string for tpm2-tools."""
    state.mkdir(parents=True, exist_ok=True)
    port = _free_port_pair()
    proc = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={state}",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"swtpm did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.05)
        yield tcti
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def tool(tcti: str, *args: str, stdin: bytes | None = None, cwd: Path | None = None) -> bytes:
    done = subprocess.run(
        list(args),
        input=stdin,
        capture_output=True,
        env={**os.environ, "TPM2TOOLS_TCTI": tcti},
        cwd=cwd,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.decode()[-500:]}")
    return done.stdout


def azure_like(tcti: str, work: Path, hcl: bytes) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tool(tcti, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", cwd=work)
    tool(tcti, "tpm2_flushcontext", "-t")
    tool(
        tcti, "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
        "-u", "ak.pub", "-n", "ak.name", cwd=work,
    )  # fmt: skip
    tool(tcti, "tpm2_flushcontext", "-t")
    tool(tcti, "tpm2_flushcontext", "-s")
    tool(tcti, "tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", f"{AK_HANDLE:#010x}", cwd=work)
    tool(tcti, "tpm2_flushcontext", "-t")
    attrs = "ownerread|ownerwrite|authread|authwrite"
    stored = hcl[:MAX_NV]
    tool(tcti, "tpm2_nvdefine", "0x01400001", "-C", "o", "-s", str(len(stored)), "-a", attrs)
    tool(tcti, "tpm2_nvwrite", "0x01400001", "-C", "o", "-i-", stdin=stored)
    tool(tcti, "tpm2_nvdefine", "0x01400002", "-C", "o", "-s", "64", "-a", attrs)


def ak_public_pem(tcti: str, work: Path) -> bytes:
    tool(tcti, "tpm2_readpublic", "-c", f"{AK_HANDLE:#010x}", "-f", "pem", "-o", "ak.pem", cwd=work)
    return (work / "ak.pem").read_bytes()
