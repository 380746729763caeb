"""``deploy/``: the systemd unit is valid, hardened, and its command lines parse with this CLI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerseal.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "layerseal-broker.service"
ENV_FILE = DEPLOY / "broker.env"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "yes",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0077",
    "StateDirectoryMode": "0700",
}


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def env_values() -> dict[str, str]:
    return {k: v[-1] for k, v in directives(ENV_FILE).items()}


def test_unit_is_hardened() -> None:
    d = directives(UNIT)
    for key, value in HARDENING.items():
        assert d.get(key) == [value], key
    assert d["User"] == ["layerseal"] and d["StateDirectory"] == ["layerseal"]


def test_unit_command_lines_parse_with_this_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_values()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    d = directives(UNIT)
    for line in (d["ExecStartPre"][0], d["ExecStart"][0]):
        argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line))[1:]
        args = build_parser(argv).parse_args(argv)
        assert args.db == env["LAYERSEAL_BROKER_DB"]
    assert args.broker_command == "serve" and args.listen == env["BROKER_LISTEN"]
    assert args.master_key_file == env["LAYERSEAL_MASTER_KEY_FILE"]
    assert args.tls_cert == env["BROKER_TLS_CERT"] and args.workers == int(env["BROKER_WORKERS"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_and_exposure(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "layerseal"
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text()
        .replace("/usr/local/bin/layerseal", str(exe))
        .replace("/etc/layerseal/broker.env", str(ENV_FILE))
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 1.5, r.stdout[-2000:]  # systemd's scale: 0 (safe) .. 10 (exposed)
