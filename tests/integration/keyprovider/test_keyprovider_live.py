"""The keyprovider against a real broker: captured skopeo requests through the cmd tool and gRPC."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from integration.broker.brokerproc import BrokerProcess, start_sim_tenant_broker
from layerseal.attest.sim_platform import init_platform
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions
from layerseal.kbs.client import PublisherClient
from layerseal.keyprovider.grpcserver import build_server, call
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from layerseal.keyprovider.tokencache import TokenCache

pytestmark = pytest.mark.integration

KP = [sys.executable, "-m", "layerseal.cli.main", "keyprovider"]
DATA = Path(__file__).resolve().parents[2] / "data" / "keyprovider"
WRAP_CAPTURE = (DATA / "skopeo-1.14-keywrap-request.json").read_bytes()
UNWRAP_CAPTURE = (DATA / "skopeo-1.14-keyunwrap-request.json").read_bytes()
CAPTURED_OPTSDATA = base64.b64decode(json.loads(WRAP_CAPTURE)["keywrapparams"]["optsdata"])


@dataclass
class World:
    broker: BrokerProcess
    admin: PublisherClient
    acme: PublisherClient
    token_file: Path
    platform: Path
    refused_platform: Path
    workdir: Path

    @property
    def url(self) -> str:
        return self.broker.url

    def attestations(self) -> int:
        return sum(1 for e in self.admin.audit() if e["action"] == "attest" and e["decision"] == "ok")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("kp")
    refused = workdir / "sim-refused"
    init_platform(refused, measurement="ab" * 48)
    tenant = start_sim_tenant_broker(workdir, other_platforms=(refused,))
    token_file = workdir / "acme.token"
    token_file.write_text(tenant.token + "\n")
    token_file.chmod(0o600)
    try:
        yield World(tenant.broker, tenant.admin, tenant.acme, token_file, tenant.platform, refused, workdir)
    finally:
        tenant.close()


def run_kp(
    args: list[str], stdin: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERSEAL_", "OCICRYPT_"))}
    return subprocess.run(
        [*KP, *args], input=stdin, capture_output=True, env={**base, **(env or {})}, timeout=120
    )


def with_annotation(request: bytes, annotation: bytes) -> bytes:
    doc = json.loads(request)
    doc["keyunwrapparams"]["annotation"] = base64.b64encode(annotation).decode()
    return json.dumps(doc).encode()


def wrap_params(name: str, rest: str) -> bytes:
    """A keywrap request as ocicrypt sends for --encryption-key provider:NAME:REST."""
    optsdata = PrivateOptions(os.urandom(32), os.urandom(16), Digest.of(os.urandom(64))).to_json_bytes()
    return json.dumps(
        {
            "op": "keywrap",
            "keywrapparams": {
                "ec": {
                    "Parameters": {name: [base64.b64encode(rest.encode()).decode()]},
                    "DecryptConfig": {"Parameters": {}},
                },
                "optsdata": base64.b64encode(optsdata).decode(),
            },
            "keyunwrapparams": {"dc": None, "annotation": None},
        }
    ).encode()


def unwrap_params(name: str, rest: str, annotation: bytes) -> bytes:
    return json.dumps(
        {
            "op": "keyunwrap",
            "keywrapparams": {"ec": None, "optsdata": None},
            "keyunwrapparams": {
                "dc": {"Parameters": {name: [base64.b64encode(rest.encode()).decode()]}},
                "annotation": base64.b64encode(annotation).decode(),
            },
        }
    ).encode()


def wrap_flags(w: World) -> list[str]:
    return ["--name", "myprov", "--kbs", w.url, "--repo", "acme/app", "--token-file", str(w.token_file)]


def unwrap_flags(w: World, cache: Path, platform: Path | None = None) -> list[str]:
    return [
        "--name",
        "myprov",
        "--kbs",
        w.url,
        "--sim-platform",
        str(platform or w.platform),
        "--cache-dir",
        str(cache),
    ]


def wrap_captured(w: World) -> bytes:
    """The packet the cmd tool returns for the captured skopeo keywrap request."""
    done = run_kp(wrap_flags(w), WRAP_CAPTURE)
    assert done.returncode == 0, done.stderr.decode()
    return base64.b64decode(json.loads(done.stdout)["keywrapresults"]["annotation"])


# ---------------------------------------------------------------- cmd protocol


def test_cmd_keywrap_of_captured_request_has_skopeo_reply_shape_and_files_the_layer(world: World) -> None:
    done = run_kp(wrap_flags(world), WRAP_CAPTURE)
    assert done.returncode == 0, done.stderr.decode()
    reply = json.loads(done.stdout)
    assert list(reply) == ["keywrapresults"]
    assert list(reply["keywrapresults"]) == ["annotation"]
    packet = json.loads(base64.b64decode(reply["keywrapresults"]["annotation"], validate=True))
    assert set(packet) >= {"kid", "wrapped_data", "iv", "wrap_type"}
    assert packet["wrap_type"] == "A256GCM"
    assert packet["kid"].startswith("kbs:///acme/layer-key/k")
    digest = json.loads(CAPTURED_OPTSDATA)["digest"]
    filed = [k for k in world.acme.list_keys("acme/app") if k["layer_digest"] == digest]
    assert filed, "the broker filed no key under the layer digest from optsdata"


def test_cmd_keyunwrap_of_captured_request_restores_the_captured_optsdata(
    world: World, tmp_path: Path
) -> None:
    packet = wrap_captured(world)
    done = run_kp(unwrap_flags(world, tmp_path / "cache"), with_annotation(UNWRAP_CAPTURE, packet))
    assert done.returncode == 0, done.stderr.decode()
    reply = json.loads(done.stdout)
    assert list(reply) == ["keyunwrapresults"]
    assert list(reply["keyunwrapresults"]) == ["optsdata"]
    assert bytes(reply["keyunwrapresults"]["optsdata"]) == CAPTURED_OPTSDATA


def test_round_trip_with_rest_parameters_restores_optsdata_byte_for_byte(
    world: World, tmp_path: Path
) -> None:
    rest = f"kbs={world.url},repo=acme/rt,token-file={world.token_file}"
    request = wrap_params("layerseal", rest)
    optsdata = base64.b64decode(json.loads(request)["keywrapparams"]["optsdata"])
    done = run_kp([], request)  # everything from the parameters, nothing from flags or env
    assert done.returncode == 0, done.stderr.decode()
    packet = base64.b64decode(json.loads(done.stdout)["keywrapresults"]["annotation"])
    env = {
        "LAYERSEAL_SIM_PLATFORM": str(world.platform),
        "LAYERSEAL_KEYPROVIDER_CACHE_DIR": str(tmp_path / "c"),
    }
    done = run_kp([], unwrap_params("layerseal", f"kbs={world.url}", packet), env)
    assert done.returncode == 0, done.stderr.decode()
    assert bytes(json.loads(done.stdout)["keyunwrapresults"]["optsdata"]) == optsdata


def test_wrap_token_from_environment_and_inline_token_refused(world: World) -> None:
    token = world.token_file.read_text().strip()
    ok = run_kp(
        ["--kbs", world.url, "--repo", "acme/env"],
        wrap_params("layerseal", "Enabled"),
        {"LAYERSEAL_KBS_TOKEN": token},
    )
    assert ok.returncode == 0, ok.stderr.decode()
    bad = run_kp([], wrap_params("layerseal", f"kbs={world.url},repo=acme/x,token={token}"))
    assert bad.returncode == 2
    err = bad.stderr.decode()
    assert "token-file" in err and token not in err


def test_unwrap_by_enclave_the_policy_refuses_names_key_and_reason(world: World, tmp_path: Path) -> None:
    packet = wrap_captured(world)
    kid = json.loads(packet)["kid"]
    done = run_kp(
        unwrap_flags(world, tmp_path / "c", world.refused_platform), with_annotation(UNWRAP_CAPTURE, packet)
    )
    assert done.returncode == 5  # DeniedError
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1  # one line
    assert kid in err
    assert "denied release" in err and "measurement" in err


def test_second_unwrap_reuses_the_cached_token(world: World, tmp_path: Path) -> None:
    packet = wrap_captured(world)
    request = with_annotation(UNWRAP_CAPTURE, packet)
    cache = tmp_path / "cache"
    before = world.attestations()
    for _ in range(2):
        done = run_kp(unwrap_flags(world, cache), request)
        assert done.returncode == 0, done.stderr.decode()
    assert world.attestations() - before == 1
    files = list(cache.glob("token-*.json"))
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700


def test_revoked_cached_token_is_replaced_by_one_new_attestation(world: World, tmp_path: Path) -> None:
    packet = wrap_captured(world)
    request = with_annotation(UNWRAP_CAPTURE, packet)
    cache = tmp_path / "cache"
    assert run_kp(unwrap_flags(world, cache), request).returncode == 0
    (entry,) = cache.glob("token-*.json")
    old = json.loads(entry.read_text())["token"]
    world.admin.revoke_attestation_token(token=old)
    before = world.attestations()
    done = run_kp(unwrap_flags(world, cache), request)
    assert done.returncode == 0, done.stderr.decode()
    assert world.attestations() - before == 1
    assert json.loads(entry.read_text())["token"] != old


def test_foreign_annotation_from_capture_is_refused_clearly(world: World, tmp_path: Path) -> None:
    done = run_kp(unwrap_flags(world, tmp_path / "c"), UNWRAP_CAPTURE)  # the capture's toy provider blob
    assert done.returncode == 2
    assert "expected a layerseal key packet" in done.stderr.decode()


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [
        (b"{not json", "expected one JSON object"),
        (b'{"op":"keyrotate"}', "expected 'keywrap' or 'keyunwrap', seen 'keyrotate'"),
        (b"", "expected one JSON object"),
    ],
)
def test_malformed_requests_fail_with_one_line(world: World, stdin: bytes, needle: str) -> None:
    done = run_kp(wrap_flags(world), stdin)
    assert done.returncode == 2
    assert done.stdout == b""
    err = done.stderr.decode()
    assert needle in err and err.count("\n") == 1


# ---------------------------------------------------------------- gRPC


@pytest.fixture
def grpc_world(world: World, tmp_path: Path) -> Iterator[tuple[World, Provider, grpc.Channel]]:
    settings = Settings(
        kbs=world.url, repo="acme/grpc", token_file=str(world.token_file), sim_platform=str(world.platform)
    )
    provider = Provider("myprov", settings, env={}, cache=TokenCache(tmp_path / "cache"))
    server, port = build_server(provider, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield world, provider, channel
    finally:
        channel.close()
        server.stop(None)
        provider.close()


def test_grpc_replays_captures_with_exact_reply_shapes(
    grpc_world: tuple[World, Provider, grpc.Channel],
) -> None:
    _, provider, channel = grpc_world
    wrapped = json.loads(call(channel, "WrapKey", WRAP_CAPTURE))
    assert list(wrapped) == ["keywrapresults"] and list(wrapped["keywrapresults"]) == ["annotation"]
    packet = base64.b64decode(wrapped["keywrapresults"]["annotation"])
    unwrapped = json.loads(call(channel, "UnWrapKey", with_annotation(UNWRAP_CAPTURE, packet)))
    assert list(unwrapped) == ["keyunwrapresults"] and list(unwrapped["keyunwrapresults"]) == ["optsdata"]
    assert bytes(unwrapped["keyunwrapresults"]["optsdata"]) == CAPTURED_OPTSDATA
    # a Rust client sends byte fields as number arrays
    doc = json.loads(with_annotation(UNWRAP_CAPTURE, packet))
    doc["keyunwrapparams"]["annotation"] = list(packet)
    doc["keyunwrapparams"]["dc"]["Parameters"]["myprov"] = [list(b"Enabled")]
    again = json.loads(call(channel, "UnWrapKey", json.dumps(doc).encode()))
    assert bytes(again["keyunwrapresults"]["optsdata"]) == CAPTURED_OPTSDATA
    assert provider.attestations == 1  # the token is reused across requests


def test_grpc_errors_carry_status_and_message(grpc_world: tuple[World, Provider, grpc.Channel]) -> None:
    _, _, channel = grpc_world
    with pytest.raises(grpc.RpcError) as bad:
        call(channel, "UnWrapKey", b'{"op":"keyrotate"}')
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "keyrotate" in (bad.value.details() or "")
    with pytest.raises(grpc.RpcError) as foreign:
        call(channel, "UnWrapKey", UNWRAP_CAPTURE)
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected a layerseal key packet" in (foreign.value.details() or "")


def test_grpc_refused_enclave_is_permission_denied(world: World, tmp_path: Path) -> None:
    packet = wrap_captured(world)
    settings = Settings(kbs=world.url, sim_platform=str(world.refused_platform))
    provider = Provider("myprov", settings, env={}, cache=None)
    server, port = build_server(provider, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as denied:
            call(channel, "UnWrapKey", with_annotation(UNWRAP_CAPTURE, packet))
    finally:
        server.stop(None)
        provider.close()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert json.loads(packet)["kid"] in (denied.value.details() or "")


def test_serve_subcommand_answers_and_stops_on_sigterm(world: World, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
    cmd = [*KP, "serve", "--grpc", "127.0.0.1:0", *unwrap_flags(world, tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "serving gRPC" in line, line
        address = line.split()[-1]
        packet = wrap_captured(world)
        with grpc.insecure_channel(address) as channel:
            reply = json.loads(call(channel, "UnWrapKey", with_annotation(UNWRAP_CAPTURE, packet)))
        assert bytes(reply["keyunwrapresults"]["optsdata"]) == CAPTURED_OPTSDATA
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parallel_per_layer_processes_attest_once(world: World, tmp_path: Path) -> None:
    # skopeo decrypts layers concurrently: the cache lock must make them share one attestation
    packet = wrap_captured(world)
    request = with_annotation(UNWRAP_CAPTURE, packet)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
    before = world.attestations()
    procs = [
        subprocess.Popen(
            [*KP, *unwrap_flags(world, tmp_path / "cache")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(request, timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e.decode() for _, e in outs]
    for out, _ in outs:
        assert bytes(json.loads(out)["keyunwrapresults"]["optsdata"]) == CAPTURED_OPTSDATA
    assert world.attestations() - before == 1
