"""Network failures name their cause and the fix; those no retry can fix fail at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from support.fault_proxy import FaultProxy
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]


def _inspect(ref: str, *flags: str) -> tuple[int, str, float]:
    started = time.monotonic()
    r = subprocess.run([*LAYERSEAL, "inspect", *flags, ref], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_connection_refused_is_named_with_its_fix() -> None:
    status, err, _ = _inspect(f"docker://127.0.0.1:{_closed_port()}/x:y", "--retry-times", "1")
    line = _one_line(err)
    assert status == 4
    assert "connection to 127.0.0.1" in line and "refused" in line and "registry is running" in line
    assert "ConnectError" not in line


def test_unknown_name_fails_at_once() -> None:
    status, err, _ = _inspect("docker://no-such-registry.invalid/x:y")
    line = _one_line(err)
    assert status == 4
    assert "name no-such-registry.invalid not resolved" in line and "host name" in line


def test_plain_http_registry_gets_the_flag_to_use(registry: RegistryServer) -> None:
    status, err, _ = _inspect(f"docker://{registry.host}/x:y")
    line = _one_line(err)
    assert status == 4
    assert "this looks like plain HTTP: use --src-tls-verify=false" in line


def test_untrusted_certificate_is_named(tls_registry: object) -> None:
    server = tls_registry.server  # type: ignore[attr-defined]
    status, err, _ = _inspect(f"docker://{server.host}/x:y")
    line = _one_line(err)
    assert status == 4
    assert "not trusted" in line and "--src-cert-dir DIR" in line and "--src-tls-verify=false" in line


def test_tls_failures_are_not_retried(registry: RegistryServer) -> None:
    """A TLS hello to a plain-HTTP registry: one connection, not five."""
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        counted: list[int] = []
        original = proxy._server.get_request

        def counting() -> tuple[socket.socket, object]:
            conn = original()
            counted.append(1)
            return conn

        proxy._server.get_request = counting  # type: ignore[method-assign]
        status, err, _ = _inspect(f"docker://{proxy.host}/x:y")
    assert status == 4, err
    assert len(counted) == 1, err


def test_broker_connection_errors_name_their_cause(registry: RegistryServer) -> None:
    """The broker client words them for its own flags (any plain-HTTP server will do here)."""
    base = [*LAYERSEAL, "broker", "keys", "list", "--token", "t", "--url"]
    r = subprocess.run(
        [*base, f"http://127.0.0.1:{_closed_port()}"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 4
    assert "refused" in _one_line(r.stderr) and "ConnectError" not in r.stderr
    r = subprocess.run([*base, f"https://{registry.host}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert "this looks like plain HTTP: use an http:// broker URL" in _one_line(r.stderr)
