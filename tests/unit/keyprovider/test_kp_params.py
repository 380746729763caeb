"""The provider:NAME:REST syntax, environment and config-file settings, and their precedence."""

from __future__ import annotations

import pytest

from layerseal.errors import BadInputError
from layerseal.keyprovider.params import (
    Settings,
    parse_rest,
    settings_from_config,
    settings_from_env,
    settings_to_rest,
)


def test_full_rest() -> None:
    s = parse_rest(
        "kbs=https://broker:8443/,repo=team/app,tenant=acme,token-file=/run/secrets/t,cacert=/ca.pem"
    )
    assert s == Settings(
        kbs="https://broker:8443",
        repo="team/app",
        tenant="acme",
        token_file="/run/secrets/t",
        cacert="/ca.pem",
    )


@pytest.mark.parametrize("rest", [None, "", "Enabled", " Enabled "])
def test_enabled_and_empty_mean_defaults(rest: str | None) -> None:
    assert parse_rest(rest) == Settings()


def test_spaces_around_items_are_ignored() -> None:
    assert parse_rest("kbs=http://b:1 , repo = a/b") == Settings(kbs="http://b:1", repo="a/b")


@pytest.mark.parametrize(
    ("rest", "needle"),
    [
        ("https://broker:8443", "expected key=value items separated by ';'"),
        ("kbs=http://b,frob=1", "expected one of kbs, repo, tenant, token-file, cacert, seen 'frob'"),
        ("sim-platform=/x", "set it with a flag, the environment or the config file"),
        ("kbs=http://a,kbs=http://b", "'kbs': expected once, seen twice"),
        ("kbs=ftp://b", "expected an http:// or https:// URL with a host, seen 'ftp://b'"),
        ("kbs=https://", "URL with a host"),
        ("repo=", "'repo': expected a value, seen an empty one"),
        ("kbs=http://b,", "seen no '='"),
    ],
)
def test_rest_errors_are_clear(rest: str, needle: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_rest(rest, "layerseal")
    assert needle in str(info.value)
    assert "provider:layerseal" in str(info.value)


def test_inline_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(BadInputError) as info:
        parse_rest("kbs=http://b,token=lsk_secret_value")
    assert "token-file" in str(info.value)
    assert "lsk_secret_value" not in str(info.value)
    with pytest.raises(BadInputError) as bare:
        parse_rest("kbs=http://b,lsk_secret_value")
    assert "item 2" in str(bare.value) and "lsk_secret_value" not in str(bare.value)


def test_precedence_rest_over_flags_over_env_over_config() -> None:
    config = settings_from_config(
        {"kbs": "http://config", "repo": "c/r", "tee": "sim", "cache-dir": "/c", "sim-platform": "/p"},
        "f.json",
    )
    env = settings_from_env(
        {"LAYERSEAL_KBS_URL": "http://env", "LAYERSEAL_KBS_REPOSITORY": "e/r", "LAYERSEAL_SIM_PLATFORM": ""}
    )
    flags = Settings(kbs="http://flag")
    base = flags.over(env.over(config))
    assert base == Settings(kbs="http://flag", repo="e/r", tee="sim", cache_dir="/c", sim_platform="/p")
    assert parse_rest("kbs=http://rest").over(base).kbs == "http://rest"
    assert parse_rest("Enabled").over(base) == base


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "expected a JSON object, seen list"),
        ({"token": "x"}, "expected token-file, seen an inline token"),
        ({"kbs": "http://b", "nope": 1}, "seen 'nope'"),
        ({"repo": 3}, "key 'repo': expected a string, seen int"),
        ({"kbs": "b"}, "URL with a host"),
    ],
)
def test_config_errors(doc: object, needle: str) -> None:
    with pytest.raises(BadInputError) as info:
        settings_from_config(doc, "/etc/kp.json")
    assert needle in str(info.value) and "/etc/kp.json" in str(info.value)


def test_config_null_values_are_unset() -> None:
    assert settings_from_config({"kbs": None, "repo": "a/b"}, "f") == Settings(repo="a/b")


def test_env_names() -> None:
    env = {
        "LAYERSEAL_KBS_URL": "http://b:8080/",
        "LAYERSEAL_KBS_TOKEN_FILE": "/t",
        "LAYERSEAL_KBS_CACERT": "/ca",
        "LAYERSEAL_TEE": "sim",
        "LAYERSEAL_KEYPROVIDER_CACHE_DIR": "/run/c",
        "LAYERSEAL_KBS_TENANT": "acme",
    }
    assert settings_from_env(env) == Settings(
        kbs="http://b:8080", token_file="/t", cacert="/ca", tee="sim", cache_dir="/run/c", tenant="acme"
    )


def test_settings_to_rest_round_trips() -> None:
    s = Settings(kbs="http://b:1", repo="a/b", token_file="/t", sim_platform="/not-in-rest")
    text = settings_to_rest(s)
    assert "sim" not in text
    assert parse_rest(text) == Settings(kbs="http://b:1", repo="a/b", token_file="/t")
    assert settings_to_rest(Settings()) == "Enabled"


def test_semicolon_form_equals_the_comma_form() -> None:
    semi = parse_rest("kbs=https://broker:8443;repo=team/app;token-file=/run/secrets/t")
    comma = parse_rest("kbs=https://broker:8443,repo=team/app,token-file=/run/secrets/t")
    assert semi == comma == Settings(kbs="https://broker:8443", repo="team/app", token_file="/run/secrets/t")
    assert parse_rest("kbs=http://b:1; repo=a/b") == Settings(kbs="http://b:1", repo="a/b")


def test_semicolon_form_survives_the_csv_split_of_skopeo_podman_buildah() -> None:
    from support.pflag_csv import string_slice

    key = "provider:attestation-agent:kbs=https://broker:8443;repo=team/app;token-file=/run/secrets/t"
    assert string_slice([key]) == [key]
    split = string_slice([key.replace(";", ",")])
    assert split == [
        "provider:attestation-agent:kbs=https://broker:8443",
        "repo=team/app",
        "token-file=/run/secrets/t",
    ]
