"""Everyday mistakes give one line and a documented exit status, never a traceback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.images import make_image

pytestmark = pytest.mark.integration
LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]
NOWHERE = "http://127.0.0.1:9"  # never contacted: the mistake is found first


def run(
    *argv: str, cwd: Path | None = None, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAYERSEAL, *argv], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["broker", "policy", "set", "missing.json", "--token", "t", "--url", NOWHERE], "missing.json"),
        (["broker", "policy", "set", "bad.json", "--token", "t", "--url", NOWHERE], "bad.json"),
        (["broker", "policy", "set", "list.json", "--token", "t", "--url", NOWHERE], "list.json"),
        (
            [
                "broker",
                "token",
                "create",
                "--tenant",
                "t",
                "--scope",
                "keys:read",
                "--token-file",
                "missing.token",
                "--url",
                NOWHERE,
            ],
            "missing.token",
        ),
        (["broker", "platform", "register", "missing.pem", "--token", "t", "--url", NOWHERE], "missing.pem"),
        (
            ["broker", "keys", "list", "--token", "t", "--ca", "missing-ca.pem", "--url", NOWHERE],
            "missing-ca.pem",
        ),
        (
            [
                "broker",
                "serve",
                "--db",
                "x.db",
                "--tls-cert",
                "nope.pem",
                "--tls-key",
                "nope.key",
                "--listen",
                "127.0.0.1:0",
            ],
            "nope.pem",
        ),
        (["broker", "audit", "verify", "--db", "missing.db"], "missing.db"),
    ],
    ids=[
        "policy-missing",
        "policy-malformed",
        "policy-not-object",
        "token-file",
        "certificate",
        "ca-file",
        "tls-cert",
        "audit-db",
    ],
)
def test_missing_or_malformed_files(tmp_path: Path, argv: list[str], names: str) -> None:
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1, 2]")
    r = run(*argv, cwd=tmp_path)
    line = one_line(r)
    assert r.returncode == 2, r.stderr
    assert names in line
    # nothing made on the way: no database, no key, no token file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "list.json"]


def test_bad_log_level(tmp_path: Path) -> None:
    r = run("broker", "serve", "--db", "x.db", "--log-level", "loud", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "--log-level" in r.stderr
    assert not (tmp_path / "x.db").exists()


def test_busy_port_is_a_usage_problem_not_integrity(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("broker", "serve", "--db", str(tmp_path / "b.db"), "--listen", f"127.0.0.1:{port}")
    line = one_line(r)
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_no_space_left_writing_an_oci_layout(tmp_path: Path, small_fs: Path) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"), big=400_000)
    r = run("copy", "-q", f"oci:{tmp_path}/src:v1", f"oci:{small_fs}/dst:v1")
    line = one_line(r)
    assert r.returncode == 2, r.stderr
    assert "no space left" in line.lower()
    # nothing half-written: no blob outside the staging area, no index entry
    blobs = small_fs / "dst" / "blobs" / "sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []


@contextlib.contextmanager
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is gone, as ``| head`` leaves it."""
    r, w = os.pipe()
    os.close(r)
    try:
        yield w
    finally:
        os.close(w)


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    (tmp_path / "store").mkdir()
    for argv in (
        ["inspect", f"oci:{tmp_path}/src:v1"],
        ["store", "ls", "--json", "--store", str(tmp_path / "store")],
    ):
        with closed_pipe() as w:
            r = run(*argv, stdout=w)
        assert r.returncode == 141, r.stderr  # as a shell reports a command ended by SIGPIPE
        assert r.stderr == ""
