"""Both keyprovider clients, live: Go ocicrypt's message forms and ocicrypt-rs's, through cmd and gRPC.

Replies are decoded by the real Go ``encoding/json`` into the shapes of ocicrypt's
``KeyProviderKeyWrapProtocolOutput`` (a small Go program built here), and by a strict
emulation of serde_json's ``Vec<u8>`` (arrays of numbers only) for ocicrypt-rs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from integration.keyprovider.conftest import World
from layerseal.keyprovider.grpcserver import build_server, call
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from layerseal.keyprovider.tokencache import TokenCache

pytestmark = pytest.mark.integration

KP = [sys.executable, "-m", "layerseal.keyprovider"]
NAME = "attestation-agent"

GO_DECODER = """package main

// The reply types of github.com/containers/ocicrypt/keywrap/keyprovider, decoded as ocicrypt does.
import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type KeyWrapResults struct {
	Annotation []byte `json:"annotation"`
}
type KeyUnwrapResults struct {
	OptsData []byte `json:"optsdata"`
}
type KeyProviderKeyWrapProtocolOutput struct {
	KeyWrapResults   KeyWrapResults   `json:"keywrapresults,omitempty"`
	KeyUnwrapResults KeyUnwrapResults `json:"keyunwrapresults,omitempty"`
}

func main() {
	data, _ := io.ReadAll(os.Stdin)
	var out KeyProviderKeyWrapProtocolOutput
	if err := json.Unmarshal(data, &out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\\n", base64.StdEncoding.EncodeToString(out.KeyWrapResults.Annotation),
		base64.StdEncoding.EncodeToString(out.KeyUnwrapResults.OptsData))
}
"""


@pytest.fixture(scope="module")
def go_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain is needed (Debian package golang-go, in the Makefile's DEBS)")
    work = tmp_path_factory.mktemp("godec")
    (work / "main.go").write_text(GO_DECODER)
    (work / "go.mod").write_text("module godec\n\ngo 1.19\n")
    env = {
        **os.environ,
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GOFLAGS": "-mod=mod",
    }
    subprocess.run([go, "build", "-o", "godec", "."], cwd=work, check=True, env=env, capture_output=True)
    return work / "godec"


def go_decode(decoder: Path, reply: bytes) -> tuple[bytes, bytes]:
    out = (
        subprocess.run([str(decoder)], input=reply, capture_output=True, check=True)
        .stdout.decode()
        .split(" ")
    )
    return base64.b64decode(out[0]), base64.b64decode(out[1])


def serde_vec_u8(value: object) -> bytes:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v <= 255 for v in value):
        raise TypeError(f"serde_json: invalid type {type(value).__name__}, expected a sequence")
    return bytes(value)


def private_options(seed: int) -> bytes:
    digest = f"sha256:{seed:064x}"
    key, nonce = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(16)).decode()
    return json.dumps({"symkey": key, "digest": digest, "cipheroptions": {"nonce": nonce}}).encode()


def go_wrap(optsdata: bytes) -> bytes:
    """As Go ocicrypt marshals it (base64 []byte)."""
    ec = {"Parameters": {NAME: [base64.b64encode(b"Enabled").decode()]}, "DecryptConfig": {"Parameters": {}}}
    body = {"op": "keywrap", "keywrapparams": {"ec": ec, "optsdata": base64.b64encode(optsdata).decode()}}
    body["keyunwrapparams"] = {"dc": None, "annotation": None}
    return json.dumps(body, separators=(",", ":")).encode()


def rs_wrap(optsdata: bytes) -> bytes:
    """As ocicrypt-rs serializes it (optsdata: the JSON text)."""
    ec = {"Parameters": {NAME: [base64.b64encode(b"Enabled").decode()]}, "DecryptConfig": {"Parameters": {}}}
    body = {"op": "keywrap", "keywrapparams": {"ec": ec, "optsdata": optsdata.decode()}}
    body["keyunwrapparams"] = {"dc": None, "annotation": None}
    return json.dumps(body, separators=(",", ":")).encode()


def unwrap(annotation: bytes) -> bytes:
    """Both clients send this one alike: base64 annotation, base64 Parameters."""
    dc = {"Parameters": {NAME: [base64.b64encode(b"Enabled").decode()]}}
    body = {"op": "keyunwrap", "keywrapparams": {"ec": None, "optsdata": None}}
    body["keyunwrapparams"] = {"dc": dc, "annotation": base64.b64encode(annotation).decode()}
    return json.dumps(body, separators=(",", ":")).encode()


def cmd(world: World, tmp_path: Path, request: bytes) -> bytes:
    args = ["--kbs", world.broker.url, "--repo", "acme/forms", "--token-file", str(world.token_file)]
    args += ["--sim-platform", str(world.platform), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERSEAL_", "OCICRYPT_"))}
    r = subprocess.run([*KP, *args], input=request, capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def test_cmd_go_client_round_trip_read_by_go(kp_world: World, tmp_path: Path, go_decoder: Path) -> None:
    opts = private_options(1)
    wrapped = cmd(kp_world, tmp_path, go_wrap(opts))
    assert isinstance(json.loads(wrapped)["keywrapresults"]["annotation"], str)  # Go's own form
    annotation, _ = go_decode(go_decoder, wrapped)
    unwrapped = cmd(kp_world, tmp_path, unwrap(annotation))
    assert go_decode(go_decoder, unwrapped)[1] == opts


def test_cmd_ocicrypt_rs_client_round_trip_read_by_serde(kp_world: World, tmp_path: Path) -> None:
    opts = private_options(2)
    wrapped = json.loads(cmd(kp_world, tmp_path, rs_wrap(opts)))
    annotation = serde_vec_u8(wrapped["keywrapresults"]["annotation"])
    assert json.loads(annotation)["kid"].startswith("kbs:///acme/layer-key/")
    unwrapped = json.loads(cmd(kp_world, tmp_path, unwrap(annotation)))
    assert serde_vec_u8(unwrapped["keyunwrapresults"]["optsdata"]) == opts


def test_grpc_serves_both_clients(kp_world: World, tmp_path: Path, go_decoder: Path) -> None:
    settings = Settings(
        kbs=kp_world.broker.url,
        repo="acme/forms",
        token_file=str(kp_world.token_file),
        sim_platform=str(kp_world.platform),
    )
    provider = Provider(NAME, settings, env={}, cache=TokenCache(tmp_path / "cache"))
    server, port = build_server(provider, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            rs_opts, go_opts = private_options(3), private_options(4)
            rs_packet = serde_vec_u8(
                json.loads(call(channel, "WrapKey", rs_wrap(rs_opts)))["keywrapresults"]["annotation"]
            )
            go_packet, _ = go_decode(go_decoder, call(channel, "WrapKey", go_wrap(go_opts)))
            rs_reply = json.loads(call(channel, "UnWrapKey", unwrap(rs_packet)))
            assert serde_vec_u8(rs_reply["keyunwrapresults"]["optsdata"]) == rs_opts
            assert go_decode(go_decoder, call(channel, "UnWrapKey", unwrap(go_packet)))[1] == go_opts
    finally:
        server.stop(grace=None)
        provider.close()
