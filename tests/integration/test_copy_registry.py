"""``layerseal copy`` / ``layer add`` with docker:// on either side, against the real docker-registry."""

from __future__ import annotations

import json
import tarfile
import urllib.error
from pathlib import Path

import pytest
from isal import igzip

from helpers.images import blob_path, make_image, make_keys, manifest_of
from helpers.registry import registry_blobs, registry_manifest, skopeo_copy
from layerseal.cli.main import main
from support.fault_proxy import Fault, FaultProxy
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
INSECURE_BOTH = ["--src-tls-verify=false", "--dest-tls-verify=false"]


def test_every_combination_of_oci_and_docker(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "zstd", "gzip"))
    key = make_keys(tmp_path / "k", "ec256")
    enc = f"docker://{registry.host}/team/app:enc"
    # oci -> docker, encrypting
    assert (
        main(
            [
                "copy",
                "-q",
                *INSECURE_BOTH,
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/src:v1",
                enc,
            ]
        )
        == 0
    )
    m = registry_manifest(registry, "team/app", "enc")
    assert all(str(x["mediaType"]).endswith("+encrypted") for x in m["layers"])  # type: ignore[attr-defined]
    # docker -> docker, decrypting into another repository
    plain = f"docker://{registry.host}/team/plain:v1"
    assert main(["copy", "-q", *INSECURE_BOTH, "--decryption-key", str(key.private), enc, plain]) == 0
    # docker -> oci, plain copy: the round trip restores the original manifest byte for byte
    assert main(["copy", "-q", *INSECURE_BOTH, plain, f"oci:{tmp_path}/back:v1"]) == 0
    assert manifest_of(tmp_path / "back", "v1") == manifest_of(tmp_path / "src", "v1")
    # skopeo reads what layerseal pushed, and decrypts it
    skopeo_copy("--src-tls-verify=false", "--decryption-key", str(key.private), enc, f"oci:{tmp_path}/sk:v1")
    assert manifest_of(tmp_path / "sk", "v1")[0] == manifest_of(tmp_path / "src", "v1")[0]


def test_skopeo_pushes_encrypted_layerseal_pulls(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"))
    key = make_keys(tmp_path / "k", "rsa")
    dest = f"docker://{registry.host}/sk/app:v1"
    skopeo_copy(
        "--dest-tls-verify=false", "--encryption-key", f"jwe:{key.public}", f"oci:{tmp_path}/src:v1", dest
    )
    assert (
        main(
            [
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--decryption-key",
                str(key.private),
                dest,
                f"oci:{tmp_path}/o:v1",
            ]
        )
        == 0
    )
    assert manifest_of(tmp_path / "o", "v1") == manifest_of(tmp_path / "src", "v1")


def test_failed_decrypt_publishes_no_manifest(
    tmp_path: Path, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"))
    key, other = make_keys(tmp_path / "a", "ec256"), make_keys(tmp_path / "b", "ec384")
    enc = f"docker://{registry.host}/x/enc:v1"
    assert (
        main(
            [
                "copy",
                "-q",
                *INSECURE_BOTH,
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/src:v1",
                enc,
            ]
        )
        == 0
    )
    status = main(
        [
            "copy",
            "-q",
            *INSECURE_BOTH,
            "--decryption-key",
            str(other.private),
            enc,
            f"docker://{registry.host}/x/dec:v1",
        ]
    )
    assert status == 2
    assert "expected one of the given decryption keys" in capsys.readouterr().err
    with pytest.raises(urllib.error.HTTPError) as err:
        registry_manifest(registry, "x/dec", "v1")
    assert err.value.code == 404


def test_layer_add_keeps_old_layers_and_keys(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip", "gzip"))
    key = make_keys(tmp_path / "k", "ec256")
    v1 = f"docker://{registry.host}/team/app:v1"
    v2 = f"docker://{registry.host}/team/app:v2"
    assert (
        main(
            [
                "copy",
                "-q",
                *INSECURE_BOTH,
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/src:v1",
                v1,
            ]
        )
        == 0
    )
    old = registry_manifest(registry, "team/app", "v1")
    blobs_before = registry_blobs(registry)
    content = tmp_path / "newfiles"
    content.mkdir()
    (content / "greeting.txt").write_text("a brand new layer\n")
    args = [
        "layer",
        "add",
        "-q",
        *INSECURE_BOTH,
        v1,
        f"{content}:/srv",
        "--encryption-key",
        f"jwe:{key.public}",
    ]
    assert main([*args, "-m", "add greeting", v2]) == 0
    new = registry_manifest(registry, "team/app", "v2")
    assert new["layers"][:3] == old["layers"]  # type: ignore[index]  # same blobs, same wrapped keys
    assert str(new["layers"][3]["mediaType"]).endswith("+encrypted")  # type: ignore[index]
    added = registry_blobs(registry) - blobs_before
    assert len(added) == 3  # new layer, new config, new manifest: nothing re-uploaded
    # a decrypting copy sees the new file, and the config carries the history entry
    assert (
        main(
            ["copy", "-q", *INSECURE_BOTH, "--decryption-key", str(key.private), v2, f"oci:{tmp_path}/dec:v2"]
        )
        == 0
    )
    _, m = manifest_of(tmp_path / "dec", "v2")
    config = json.loads(blob_path(tmp_path / "dec", m["config"]["digest"]).read_bytes())  # type: ignore[index]
    assert config["history"][-1]["comment"] == "add greeting"
    assert len(config["rootfs"]["diff_ids"]) == 4

    with (
        igzip.open(blob_path(tmp_path / "dec", m["layers"][3]["digest"])) as f,
        tarfile.open(fileobj=f, mode="r|") as t,
    ):  # type: ignore[index]
        names = t.getnames()
    assert "srv/greeting.txt" in names


def test_ten_layers_in_parallel(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",) * 10, big=50_000)
    key = make_keys(tmp_path / "k", "ec256")
    dest = f"docker://{registry.host}/many/layers:v1"
    assert (
        main(
            [
                "copy",
                "-q",
                *INSECURE_BOTH,
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/src:v1",
                dest,
            ]
        )
        == 0
    )
    assert (
        main(
            ["copy", "-q", *INSECURE_BOTH, "--decryption-key", str(key.private), dest, f"oci:{tmp_path}/o:v1"]
        )
        == 0
    )
    assert manifest_of(tmp_path / "o", "v1") == manifest_of(tmp_path / "src", "v1")


def test_docker_schema2_image_is_encrypted_as_oci_and_read_back(
    tmp_path: Path, registry: RegistryServer
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"))
    docker_ref = f"docker://{registry.host}/legacy/app:v1"
    skopeo_copy("--dest-tls-verify=false", "--format", "v2s2", f"oci:{tmp_path}/src:v1", docker_ref)
    pushed = registry_manifest(
        registry, "legacy/app", "v1", accept="application/vnd.docker.distribution.manifest.v2+json"
    )
    assert pushed["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    key = make_keys(tmp_path / "k", "rsa")
    enc = f"docker://{registry.host}/legacy/enc:v1"
    assert main(["copy", "-q", *INSECURE_BOTH, "--encryption-key", f"jwe:{key.public}", docker_ref, enc]) == 0
    m = registry_manifest(registry, "legacy/enc", "v1")
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"  # converted, as ocicrypt does
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"  # type: ignore[index]
    assert all(x["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip+encrypted" for x in m["layers"])  # type: ignore[attr-defined]
    skopeo_copy("--src-tls-verify=false", "--decryption-key", str(key.private), enc, f"oci:{tmp_path}/sk:v1")
    _, dec = manifest_of(tmp_path / "sk", "v1")
    assert [x["digest"] for x in dec["layers"]] == [x["digest"] for x in pushed["layers"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("chunk_flag", [[], ["--dest-chunk-size", "1M"]], ids=["streamed", "chunked"])
def test_push_survives_an_upload_broken_off_midway(
    tmp_path: Path, registry: RegistryServer, chunk_flag: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"), big=3_000_000)
    key = make_keys(tmp_path / "k", "ec256")
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        cut = proxy.add(Fault("cut_request", path="/blobs/uploads/", method="PATCH", cut_after=500_000))
        argv = ["copy", "-q", "--dest-tls-verify=false", *chunk_flag, "--encryption-key", f"jwe:{key.public}"]
        assert main([*argv, f"oci:{tmp_path}/src:v1", f"docker://{proxy.host}/team/cut:v1"]) == 0
        uploads = [r.method for r in proxy.requests if "/blobs/uploads/" in r.path]
    assert cut.hits == 1
    assert uploads.count("DELETE") == 1  # the broken upload was cancelled, and the layer sent again
    assert "transferring it again (attempt 2 of 3)" in caplog.text
    # what the registry holds decrypts (with skopeo) to the original image
    skopeo_copy(
        "--src-tls-verify=false",
        "--decryption-key",
        str(key.private),
        f"docker://{registry.host}/team/cut:v1",
        f"oci:{tmp_path}/back:v1",
    )
    assert manifest_of(tmp_path / "back", "v1")[0] == manifest_of(tmp_path / "src", "v1")[0]


def test_push_gives_up_after_the_layer_attempts(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",), big=3_000_000)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add(Fault("cut_request", path="/blobs/uploads/", method="PATCH", cut_after=500_000, times=10))
        status = main(
            [
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"oci:{tmp_path}/src:v1",
                f"docker://{proxy.host}/t/x:v1",
            ]
        )
        patches = [r for r in proxy.requests if r.method == "PATCH"]
    assert status == 4  # TransportError's exit status
    assert len(patches) == 3  # one per layer attempt
    assert registry_blobs(registry) == set()  # nothing half-written: no blob, no manifest


def test_one_job_at_a_time_and_skopeo_style_inspect_flags(
    tmp_path: Path, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "zstd", "gzip"))
    ref = f"docker://{registry.host}/team/serial:v1"
    assert main(["copy", "-q", "--jobs", "1", "--dest-tls-verify=false", f"oci:{tmp_path}/src:v1", ref]) == 0
    capsys.readouterr()
    # skopeo inspect spells them --tls-verify / --creds / --cert-dir
    assert main(["inspect", "--json", "--tls-verify=false", ref]) == 0
    summary = json.loads(capsys.readouterr().out)
    source_layers = manifest_of(tmp_path / "src", "v1")[1]["layers"]
    assert [x["digest"] for x in summary["layers"]] == [x["digest"] for x in source_layers]
