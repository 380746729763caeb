"""Fixtures that run the real ``docker-registry`` (plain, basic auth, TLS, bearer tokens) on 127.0.0.1."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ holds the shared ``support`` package; test dirs have no __init__.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from registry_helpers import PASSWORD, READER, READER_PASSWORD, SERVICE, USER, TlsRegistry, TokenRegistry

from support.certs import make_tls_files
from support.registry_server import REGISTRY_BIN, RegistryServer, TokenAuthConfig
from support.token_server import TokenServer


def _need_registry() -> None:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@pytest.fixture
def isolated_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No auth file of the machine's user can leak into a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def registry(tmp_path: Path, isolated_auth: None) -> Iterator[RegistryServer]:
    _need_registry()
    with RegistryServer(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def basic_registry(tmp_path: Path, isolated_auth: None) -> Iterator[RegistryServer]:
    _need_registry()
    with RegistryServer(tmp_path / "registry", htpasswd={USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def tls_registry(tmp_path: Path, isolated_auth: None) -> Iterator[TlsRegistry]:
    _need_registry()
    files = make_tls_files(tmp_path / "tls")
    with RegistryServer(
        tmp_path / "registry", tls=(files.server_cert, files.server_key), ca_file=files.ca_cert
    ) as server:
        yield TlsRegistry(server, files)


@pytest.fixture
def token_registry(tmp_path: Path, isolated_auth: None) -> Iterator[TokenRegistry]:
    _need_registry()
    tokens = TokenServer(
        users={USER: PASSWORD, READER: READER_PASSWORD},
        grants={USER: ("pull", "push"), READER: ("pull",)},
    )
    bundle = tmp_path / "token-root.pem"
    bundle.write_bytes(tokens.cert_pem)
    with (
        tokens,
        RegistryServer(
            tmp_path / "registry", token=TokenAuthConfig(tokens.realm, SERVICE, tokens.issuer, str(bundle))
        ) as server,
    ):
        yield TokenRegistry(server, tokens)


@pytest.fixture
def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo is not installed")
    return path
