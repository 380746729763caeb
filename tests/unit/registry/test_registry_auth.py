"""Challenges, credentials (auth files, helpers) and the basic / bearer flows."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from registry_fakes import FakeRegistry

from layerseal.errors import BadInputError, DeniedError
from layerseal.registry.auth import parse_challenges
from layerseal.registry.client import RegistryClient
from layerseal.registry.credentials import Credentials, parse_creds, resolve_credentials

MT = "application/vnd.oci.image.manifest.v1+json"


def test_parse_bearer_challenge_with_commas_in_quotes() -> None:
    (ch,) = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_and_escapes() -> None:
    challenges = parse_challenges('Basic realm="a \\"q\\" b", charset=UTF-8, Bearer realm="x",service=svc')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params == {"realm": 'a "q" b', "charset": "UTF-8"}
    assert challenges[1].params == {"realm": "x", "service": "svc"}


def test_parse_unterminated_quote() -> None:
    with pytest.raises(BadInputError, match="closing"):
        parse_challenges('Bearer realm="oops')


def test_creds_parsing_hides_password() -> None:
    creds = parse_creds("bob:pa:ss")
    assert (creds.username, creds.password) == ("bob", "pa:ss")
    assert "pa:ss" not in repr(creds) and "pa:ss" not in str(creds)
    with pytest.raises(BadInputError) as info:
        parse_creds("nopassword")
    assert "nopassword" not in str(info.value)


def _auth_entry(user: str, pw: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_authfile_most_specific_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "reg.test": _auth_entry("host", "p1"),
                    "reg.test/team": _auth_entry("team", "p2"),
                    "https://index.docker.io/v1/": _auth_entry("hub", "p3"),
                }
            }
        )
    )
    assert resolve_credentials("reg.test", "team/app", authfile=str(path)) == Credentials("team", "p2")
    assert resolve_credentials("reg.test", "other/app", authfile=str(path)) == Credentials("host", "p1")
    assert resolve_credentials("docker.io", "library/x", authfile=str(path)) == Credentials("hub", "p3")
    assert resolve_credentials("nowhere.test", "x", authfile=str(path)) is None


def test_default_auth_file_order(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "containers"
    runtime.mkdir(parents=True)
    (runtime / "auth.json").write_text(json.dumps({"auths": {"reg.test": _auth_entry("podman", "x")}}))
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    (docker / "config.json").write_text(json.dumps({"auths": {"reg.test": _auth_entry("docker", "y")}}))
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert resolve_credentials("reg.test", env=env) == Credentials("podman", "x")
    del env["XDG_RUNTIME_DIR"]
    assert resolve_credentials("reg.test", env=env) == Credentials("docker", "y")
    assert resolve_credentials("reg.test", creds="cli:z", env=env) == Credentials("cli", "z")


def _helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "bin" / "docker-credential-fake"
    script.parent.mkdir(exist_ok=True)
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_cred_helper_and_creds_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _helper(
        tmp_path,
        monkeypatch,
        'read server\n[ "$1" = get ] || exit 9\n'
        'echo "{\\"ServerURL\\":\\"$server\\",\\"Username\\":\\"u-$server\\",\\"Secret\\":\\"sec\\"}"\n',
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credHelpers": {"reg.test": "fake"}, "credsStore": "fake"}))
    assert resolve_credentials("reg.test", authfile=str(path)) == Credentials("u-reg.test", "sec")
    # credsStore for others; Docker Hub is asked under its legacy URL
    found = resolve_credentials("docker.io", authfile=str(path))
    assert found == Credentials("u-https://index.docker.io/v1/", "sec")


def test_cred_helper_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "fake"}))
    _helper(tmp_path, monkeypatch, 'echo "credentials not found in native keychain"; exit 1\n')
    assert resolve_credentials("reg.test", authfile=str(path)) is None
    _helper(tmp_path, monkeypatch, 'echo "{\\"Secret\\":\\"topsecret\\"}"; echo "boom" >&2; exit 3\n')
    with pytest.raises(DeniedError) as info:
        resolve_credentials("reg.test", authfile=str(path))
    assert "seen 3" in str(info.value) and "topsecret" not in str(info.value)


def test_missing_authfile_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="existing file"):
        resolve_credentials("reg.test", authfile=str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    ("text", "seen"),
    [
        (
            '{"auths": {"reg.test": {"auth": "dXNlcjpwYXNz\\n"}}}',
            "field 'auth': expected base64 of 'user:password', seen invalid base64",
        ),
        (
            '{"auths": {"reg.test": {"auth": "/w=="}}}',
            "field 'auth': expected base64 of 'user:password', seen bytes not UTF-8",
        ),
        (
            '{"auths": {"reg.test": {"auth": "dXNlcg=="}}}',
            "field 'auth': expected base64 of 'user:password', seen no ':'",
        ),
        ('["topsecret"]', "expected a JSON object, seen list"),
        ('{"auths": {"topsecret"', "expected JSON, seen invalid JSON"),
    ],
)
def test_malformed_authfile_is_bad_input_without_its_text(tmp_path: Path, text: str, seen: str) -> None:
    path = tmp_path / "auth.json"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        resolve_credentials("reg.test", authfile=str(path))
    assert seen in str(info.value) and str(path) in str(info.value)
    assert "topsecret" not in str(info.value) and "dXNlcj" not in str(info.value)


@pytest.mark.parametrize(
    "answer",
    ['{\\"Username\\":\\"u\\",\\"Secret\\":1}', '[\\"topsecret\\"]', '{\\"Secret\\":\\"topsecret\\"'],
)
def test_cred_helper_answer_that_is_no_credentials_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "fake"}))
    _helper(tmp_path, monkeypatch, f'echo "{answer}"\n')
    with pytest.raises(BadInputError) as info:
        resolve_credentials("reg.test", authfile=str(path))
    message = str(info.value)
    assert "credential helper docker-credential-fake: expected JSON with 'Username' and 'Secret'" in message
    assert "topsecret" not in message


def test_basic_auth_flow() -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_manifest("team/app", "v1", b'{"schemaVersion":2}', MT)
    with RegistryClient("reg.test", fake.options(creds="alice:s3cret")) as client:
        data, _, _ = client.get_manifest("team/app", "v1")
        data2, _, _ = client.get_manifest("team/app", "v1")
    assert data == data2 == b'{"schemaVersion":2}'
    # one anonymous try, then every request carries the header up front
    assert [r.headers.get("authorization") is not None for r in fake.requests] == [False, True, True]


def test_basic_auth_without_credentials_is_denied(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    fake = FakeRegistry(auth="basic")
    with RegistryClient("reg.test", fake.options()) as client, pytest.raises(DeniedError) as info:
        client.get_manifest("team/app", "v1")
    assert "reg.test" in str(info.value) and "team/app" in str(info.value)


def test_wrong_password_is_denied_without_leaking_it() -> None:
    fake = FakeRegistry(auth="basic")
    with (
        RegistryClient("reg.test", fake.options(creds="alice:WRONGPW")) as client,
        pytest.raises(DeniedError) as e,
    ):
        client.get_manifest("team/app", "v1")
    assert "HTTP 401" in str(e.value) and "WRONGPW" not in str(e.value)
    assert "team/app" in str(e.value) and "manifest v1" in str(e.value)


def test_bearer_flow_caches_token_per_scope() -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_manifest("team/app", "v1", b'{"schemaVersion":2}', MT)
    fake.add_manifest("team/other", "v1", b'{"schemaVersion":2}', MT)
    with RegistryClient("reg.test", fake.options(creds="alice:s3cret")) as client:
        for _ in range(3):
            client.get_manifest("team/app", "v1")
        client.get_manifest("team/other", "v1")
        assert client.auth.token_fetches == 2
    assert len(fake.token_requests) == 2
    first = fake.token_requests[0]
    assert first.url.params.get("service") == "fake"
    assert first.url.params.get_list("scope") == ["repository:team/app:pull"]
    assert first.url.params.get("account") == "alice"
    # the second repository's token was fetched before its first request, no extra 401
    statuses = [r.url.path for r in fake.requests if r.url.host == "reg.test"]
    assert statuses.count("/v2/team/other/manifests/v1") == 1


def test_bearer_token_refetched_after_expiry() -> None:
    now = [1000.0]
    fake = FakeRegistry(auth="bearer", token_expires_in=60)
    fake.add_manifest("a/b", "v1", b"{}", MT)
    with RegistryClient("reg.test", fake.options(creds="alice:s3cret")) as client:
        client.auth._clock = lambda: now[0]
        client.get_manifest("a/b", "v1")
        now[0] += 30
        client.get_manifest("a/b", "v1")
        assert len(fake.token_requests) == 1
        now[0] += 30
        client.get_manifest("a/b", "v1")
    assert len(fake.token_requests) == 2


def test_token_server_refusal_names_user_not_password() -> None:
    fake = FakeRegistry(auth="bearer")
    with (
        RegistryClient("reg.test", fake.options(creds="alice:nottheone")) as client,
        pytest.raises(DeniedError) as e,
    ):
        client.get_manifest("a/b", "v1")
    text = str(e.value)
    assert "token server auth.test" in text and "'alice'" in text and "repository:a/b:pull" in text
    assert "nottheone" not in text


def test_push_token_also_serves_pulls_of_that_repository() -> None:
    from layerseal.registry import open_registry_destination

    fake = FakeRegistry(auth="bearer")
    with open_registry_destination(
        "docker://reg.test/team/app:v1", fake.options(creds="alice:s3cret")
    ) as dst:
        dst.put_blob(iter([b"layer"]), "application/octet-stream")
        assert dst.client.stat_blob("team/app", dst.client.upload_blob("team/app", [b"more"])[0]) == 4
        dst.put_manifest(b'{"schemaVersion":2}', MT)
    assert [r.url.params.get_list("scope") for r in fake.token_requests] == [
        ["repository:team/app:pull,push"]
    ]
