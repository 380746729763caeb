"""Run the real Debian ``docker-registry`` (distribution 2.8) on 127.0.0.1 for tests.

Usage from any test package::

    from support.registry_server import RegistryServer, make_htpasswd_line

    with RegistryServer(tmp_path) as reg:            # plain HTTP
        reg.host      # "127.0.0.1:PORT"
        reg.url       # "http://127.0.0.1:PORT"

Variants: ``htpasswd={"user": "pass"}`` (basic auth), ``tls=(cert_pem, key_pem)``
paths (HTTPS), ``token=TokenAuthConfig(...)`` (bearer tokens from a token server).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_htpasswd_line(user: str, password: str) -> str:
    """``user:$2b$...`` with bcrypt (the only scheme distribution accepts)."""
    try:
        import bcrypt  # type: ignore[import-not-found,unused-ignore]

        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    except ImportError:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # glibc's libxcrypt does bcrypt; module removed in Python 3.13

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32))
        if not hashed or not hashed.startswith("$2"):
            raise RuntimeError("no bcrypt available: pip install bcrypt") from None
    return f"{user}:{hashed}"


@dataclass(frozen=True)
class TokenAuthConfig:
    realm: str
    service: str
    issuer: str
    rootcertbundle: str


class RegistryServer:
    """A ``docker-registry serve`` child process with its own storage directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        ca_file: Path | None = None,
        token: TokenAuthConfig | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage = self.workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.ca_file = ca_file
        self.htpasswd = htpasswd
        self.token = token
        self.start_timeout = start_timeout
        self.log_path = self.workdir / "registry.log"
        self.config_path = self.workdir / "config.yml"
        self._proc: subprocess.Popen[bytes] | None = None

    def cpu_seconds(self) -> float:
        """User + system CPU the registry process has used so far (benchmarks share it out)."""
        if self._proc is None:
            return 0.0
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> dict[str, Any]:
        http: dict[str, Any] = {"addr": self.host, "secret": secrets.token_hex(16)}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.htpasswd is not None:
            path = self.workdir / "htpasswd"
            path.write_text("".join(make_htpasswd_line(u, p) + "\n" for u, p in self.htpasswd.items()))
            config["auth"] = {"htpasswd": {"realm": "layerseal-test", "path": str(path)}}
        elif self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": self.token.rootcertbundle,
                }
            }
        return config

    def start(self) -> RegistryServer:
        # JSON is YAML: no YAML library needed
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.ca_file is None:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + self.start_timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context) as r:
                    r.read()
                return
            except urllib.error.HTTPError:
                return  # 401 from an auth-enabled registry: it is serving
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"docker-registry did not answer on {self.url} in {self.start_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
