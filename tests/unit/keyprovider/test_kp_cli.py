"""The keyprovider command line: ocicrypt config output, settings loading, cmd errors (no broker)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from layerseal.cli import keyprovider as kpcli
from layerseal.errors import BadInputError
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider, layer_digest, load_settings, make_attester, read_token


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    kpcli.add_arguments(p)
    return p.parse_args(list(argv))


def test_config_cmd_form() -> None:
    doc = kpcli.ocicrypt_config(parse("config"))
    cmd = doc["key-providers"]["attestation-agent"]["cmd"]
    assert Path(cmd["path"]).is_absolute()
    assert cmd["args"] in (["keyprovider"], ["-m", "layerseal.keyprovider"])


def test_config_grpc_form_and_name() -> None:
    doc = kpcli.ocicrypt_config(parse("config", "--name", "layerseal", "--grpc", "127.0.0.1:50000"))
    assert doc == {"key-providers": {"layerseal": {"grpc": "127.0.0.1:50000"}}}


def test_one_provider_name_across_the_project() -> None:
    from layerseal.builder.kbswrap import SCHEME
    from layerseal.crypto import keywrap
    from layerseal.engine import keys as engine_keys
    from layerseal.keyprovider import provider as kp

    assert kpcli.DEFAULT_NAME == keywrap.PROVIDER_NAME == "attestation-agent"
    assert f"provider.{keywrap.PROVIDER_NAME}" == SCHEME
    assert kp.BROKER_PROVIDER_NAMES == keywrap.BROKER_PROVIDER_NAMES
    assert set(engine_keys.SCHEMES) == {"provider.attestation-agent", "provider.layerseal"}


@pytest.mark.parametrize(
    ("own", "given"), [("attestation-agent", "layerseal"), ("layerseal", "attestation-agent")]
)
def test_broker_provider_reads_parameters_given_under_the_other_broker_name(own: str, given: str) -> None:
    """An ocicrypt config from when ``layerseal`` was the default passes no --name: its
    ``provider:layerseal:...`` parameters still reach the provider (and the other way round)."""
    p = Provider(own, Settings(repo="base/repo"), env={})
    s = p.settings_for({given: (b"kbs=http://broker:1,repo=team/app",)})
    assert (s.kbs, s.repo) == ("http://broker:1", "team/app")
    assert p.settings_for({}).repo == "base/repo"
    assert Provider("other", Settings(), env={}).settings_for({given: (b"kbs=http://b:1",)}).kbs is None


def test_config_passes_settings_with_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = parse(
        "config", "--module", "--name", "kp", "--kbs", "http://b:1", "--sim-platform", "sim", "--no-cache"
    )
    cmd = kpcli.ocicrypt_config(args)["key-providers"]["kp"]["cmd"]
    assert cmd["path"] == sys.executable
    assert cmd["args"] == [
        "-m",
        "layerseal.keyprovider",
        "--name",
        "kp",
        "--kbs",
        "http://b:1",
        "--sim-platform",
        str(tmp_path / "sim"),
        "--no-cache",
    ]


def test_cmd_errors_are_one_line_with_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"op":"nope"}')))
    assert kpcli.main(["--kbs", "http://127.0.0.1:9"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert (
        out.err
        == "layerseal: error: keyprovider request op: expected 'keywrap' or 'keyunwrap', seen 'nope'\n"
    )


def test_serve_requires_grpc_address() -> None:
    assert kpcli.main(["serve"]) == 2


def test_load_settings_from_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "kp.json"
    cfg.write_text(json.dumps({"kbs": "http://cfg:1", "repo": "c/r", "sim-platform": "/p"}))
    s = load_settings(Settings(repo="flag/r"), None, {"LAYERSEAL_KEYPROVIDER_CONFIG": str(cfg)})
    assert s == Settings(kbs="http://cfg:1", repo="flag/r", sim_platform="/p")
    with pytest.raises(BadInputError, match="expected a readable file"):
        load_settings(Settings(), str(tmp_path / "missing.json"), {})
    cfg.write_text("{")
    with pytest.raises(BadInputError, match="expected JSON"):
        load_settings(Settings(), str(cfg), {})


def test_read_token(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("lsk_a_b\n")
    assert read_token(Settings(token_file=str(f)), {"LAYERSEAL_KBS_TOKEN": "other"}) == "lsk_a_b"
    assert read_token(Settings(), {"LAYERSEAL_KBS_TOKEN": " lsk_c "}) == "lsk_c"
    with pytest.raises(BadInputError, match="expected a broker API token"):
        read_token(Settings(), {})
    f.write_text("")
    with pytest.raises(BadInputError, match="empty file"):
        read_token(Settings(token_file=str(f)), {})


def test_layer_digest_from_optsdata() -> None:
    d = "sha256:" + "ab" * 32
    assert layer_digest(json.dumps({"symkey": "x", "digest": d}).encode()) == d
    with pytest.raises(BadInputError, match="field 'digest'"):
        layer_digest(b'{"digest":"md5:00"}')
    with pytest.raises(BadInputError, match="private options JSON"):
        layer_digest(b"\xff")


def test_missing_settings_are_named() -> None:
    p = Provider("layerseal", Settings(), env={})
    with pytest.raises(BadInputError, match=r"broker URL \(kbs=URL in provider:layerseal"):
        p.http(Settings())
    with pytest.raises(BadInputError, match="expected a platform directory"):
        make_attester(Settings())
    with pytest.raises(BadInputError, match=r"tee: expected one of \['auto', 'snp'"):
        make_attester(Settings(tee="sev"))
