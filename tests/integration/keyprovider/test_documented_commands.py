"""The commands in docs/keyprovider.md, verbatim, through skopeo's flag parsing and into the provider.

skopeo, podman and buildah read ``--encryption-key``/``--decryption-key`` with pflag's CSV
split (``support.pflag_csv``, checked against Debian's skopeo below); ocicrypt then turns
``provider:NAME[:REST]`` into ``Parameters[NAME] = [REST or "Enabled"]``.  Debian's skopeo
is built with ocicrypt 1.0.3 and refuses ``provider:``, so the last step is emulated from
ocicrypt's helpers and the requests it sends are the ones captured from skopeo 1.14.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from integration.keyprovider.conftest import World
from layerseal.cli import keyprovider as kpcli
from layerseal.keyprovider import protocol
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from support.layerseal_cli import run_layerseal
from support.pflag_csv import CsvError, string_slice

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "keyprovider.md"
CAPTURES = ROOT / "tests" / "data" / "keyprovider"
INTEROP = ROOT / "tests" / "data" / "interop"
TOOLS = ("skopeo", "podman", "buildah")
KEY_FLAGS = ("--encryption-key", "--decryption-key")


def console_commands() -> list[list[str]]:
    """Every ``$ ...`` command of the doc's console blocks, continuation lines joined, split as a shell would."""
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for cmd in re.findall(r"^\$ (.*(?:\\\n.*)*)", block, re.M):
            commands.append(shlex.split(cmd.replace("\\\n", " ")))
    return commands


def key_values(argv: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, arg in enumerate(argv):
        for flag in KEY_FLAGS:
            if arg == flag:
                out.append((flag, argv[i + 1]))
            elif arg.startswith(flag + "="):
                out.append((flag, arg[len(flag) + 1 :]))
    return out


def ocicrypt_parameters(flag: str, keys: list[str]) -> dict[str, tuple[bytes, ...]]:
    """ocicrypt's helpers: CreateCryptoConfig for recipients or private keys, then *WithKeyProvider."""
    params: dict[str, list[bytes]] = {}
    for key in keys:
        protocol_name, sep, value = key.partition(":")
        if flag == "--encryption-key" and not sep:
            raise ValueError(f"{key!r}: Invalid recipient format")
        if protocol_name != "provider":
            continue
        name, sep, rest = value.partition(":")
        params.setdefault(name, []).append(rest.encode() if sep else b"Enabled")
    return {k: tuple(v) for k, v in params.items()}


def documented_config_args() -> Settings:
    """The settings the documented ``layerseal keyprovider config`` puts into the args."""
    for argv in console_commands():
        if argv[:3] == ["layerseal", "keyprovider", "config"] and "--kbs" in argv:
            import argparse

            p = argparse.ArgumentParser()
            kpcli.add_arguments(p)
            args = p.parse_args([a for a in argv[2:] if a != ">" and not a.startswith("/etc/")])
            return Settings(kbs=args.kbs, repo=args.repo, token_file=args.token_file)
    raise AssertionError("docs/keyprovider.md shows no 'layerseal keyprovider config --kbs ...' command")


def test_every_documented_key_survives_the_csv_split_and_reaches_the_provider() -> None:
    seen = 0
    config = documented_config_args()
    for argv in console_commands():
        if argv[0] not in TOOLS:
            continue
        for flag, value in key_values(argv):
            keys = string_slice([value])
            assert keys == [value], f"{argv[0]} splits {value!r} into {keys}"
            params = ocicrypt_parameters(flag, keys)
            assert list(params) == [kpcli.DEFAULT_NAME], params  # the name the documented config registers
            provider = Provider(kpcli.DEFAULT_NAME, config, env={})
            settings = provider.settings_for(params)  # raises on a malformed REST
            (rest,) = params[kpcli.DEFAULT_NAME]
            if rest != b"Enabled":  # each item given in the key arrives as itself
                for item in rest.decode().split(";"):
                    k, _, v = item.partition("=")
                    assert getattr(settings, k.replace("-", "_")) == v, (item, settings)
            assert settings.kbs and settings.kbs.startswith("https://")
            if flag == "--encryption-key":
                assert settings.repo and settings.token_file
            seen += 1
    assert seen >= 8  # skopeo x4, podman x2, buildah x2


def test_comma_form_is_split_by_skopeo_and_refused_by_ocicrypt() -> None:
    value = "provider:attestation-agent:kbs=https://broker.example:8443,repo=team/app,token-file=/t"
    keys = string_slice([value])
    assert keys == [
        "provider:attestation-agent:kbs=https://broker.example:8443",
        "repo=team/app",
        "token-file=/t",
    ]
    with pytest.raises(ValueError, match="Invalid recipient format"):
        ocicrypt_parameters("--encryption-key", keys)
    # CSV-quoted, the old form arrives whole and is still accepted
    (whole,) = string_slice([f'"{value}"'])
    params = ocicrypt_parameters("--encryption-key", [whole])
    settings = Provider("attestation-agent", Settings(), env={}).settings_for(params)
    assert (settings.kbs, settings.repo, settings.token_file) == (
        "https://broker.example:8443",
        "team/app",
        "/t",
    )


SPLIT_CASES = [
    "jwe:/nonexistent/a.pem,jwe:/nonexistent/b.pem",
    '"jwe:/nonexistent/a,b.pem",jwe:/nonexistent/c.pem',
    "jwe:/nonexistent/x;y.pem",
    'jwe:/nonexistent/a"b.pem',
    'jwe:/nonexistent/q.pem,"jwe:/nonexistent/""quoted"".pem"',
]


@pytest.mark.parametrize("value", SPLIT_CASES)
def test_emulated_split_matches_debian_skopeo(value: str, tmp_path: Path) -> None:
    """skopeo reports the first key file it cannot read: the first element of its split."""
    r = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--encryption-key",
            value,
            f"oci:{INTEROP}/src:gz",
            f"oci:{tmp_path}/o:x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    try:
        first = string_slice([value])[0]
    except CsvError as exc:
        assert str(exc) in r.stderr.replace('\\"', '"')
        return
    assert f"open {first.removeprefix('jwe:')}: no such file" in r.stderr.replace('\\"', '"'), r.stderr


def test_documented_config_args_form_end_to_end_with_captured_requests(
    kp_world: World, tmp_path: Path
) -> None:
    """``layerseal keyprovider config`` as documented (URL and paths of this test's broker), then the
    command it writes answers skopeo 1.14's captured keywrap and keyunwrap requests."""
    (doc_cmd,) = [
        a for a in console_commands() if a[:3] == ["layerseal", "keyprovider", "config"] and "--kbs" in a
    ]
    argv = doc_cmd[2 : doc_cmd.index(">")] if ">" in doc_cmd else doc_cmd[2:]
    replace = {
        "https://broker.example:8443": kp_world.broker.url,
        "/run/secrets/layerseal-token": str(kp_world.token_file),
        "team/app": "acme/app",
    }
    argv = [replace.get(a, a) for a in argv]
    argv += ["--sim-platform", str(kp_world.platform), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERSEAL_", "OCICRYPT_"))}
    out = run_layerseal("keyprovider", *argv, env=env, check=True)
    ((name, entry),) = json.loads(out.stdout)["key-providers"].items()
    assert name == "attestation-agent"
    cmd = [entry["cmd"]["path"], *entry["cmd"]["args"]]

    wrap_request = (CAPTURES / "skopeo-1.14-keywrap-request.json").read_bytes()  # verbatim
    wrapped = subprocess.run(cmd, input=wrap_request, capture_output=True, env=env, timeout=120)
    assert wrapped.returncode == 0, wrapped.stderr.decode()
    annotation = json.loads(wrapped.stdout)["keywrapresults"]["annotation"]
    keys = kp_world.acme.list_keys("acme/app")
    captured_opts = base64.b64decode(json.loads(wrap_request)["keywrapparams"]["optsdata"])
    assert json.loads(captured_opts)["digest"] in {k["layer_digest"] for k in keys}

    unwrap_request = json.loads((CAPTURES / "skopeo-1.14-keyunwrap-request.json").read_bytes())
    unwrap_request["keyunwrapparams"]["annotation"] = (
        annotation  # the blob ocicrypt stored, otherwise verbatim
    )
    done = subprocess.run(
        cmd, input=json.dumps(unwrap_request).encode(), capture_output=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert protocol.parse_reply(done.stdout, protocol.OP_UNWRAP) == captured_opts
