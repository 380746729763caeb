"""``layerseal copy --all``: every image of an index, against the real docker-registry and skopeo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.images import make_keys
from helpers.registry import registry_manifest, skopeo_copy
from layerseal.cli.main import main
from layerseal.registry import RegistryOptions, open_registry_destination
from support.oci_images import OCI_INDEX, OCI_MANIFEST, SampleImage, descriptor, dumps, make_image, sha256
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IN_TOTO = "application/vnd.in-toto+json"


def _attestation() -> SampleImage:
    """An index entry as buildx writes provenance: layers that are no filesystem."""
    config, statement = b"{}", b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(IN_TOTO, statement)],
        }
    )
    return SampleImage(manifest, {sha256(config): config, sha256(statement): statement})


def _push_index(registry: RegistryServer, ref: str) -> tuple[bytes, dict[str, SampleImage]]:
    images = {
        "linux/amd64": make_image([{"arch": b"amd64"}, {"two": b"2"}], arch="amd64"),
        "linux/arm64": make_image([{"arch": b"arm64"}], arch="arm64"),
        "unknown/unknown": _attestation(),
    }
    manifests = []
    with open_registry_destination(
        f"docker://{registry.host}/{ref}", RegistryOptions(tls_verify=False)
    ) as dst:
        for platform, image in images.items():
            for data in image.blobs.values():
                dst.client.upload_blob(dst.repository, [data])
            dst.put_manifest_by_digest(image.manifest, OCI_MANIFEST)
            os_name, arch = platform.split("/")
            manifests.append(
                descriptor(OCI_MANIFEST, image.manifest, platform={"architecture": arch, "os": os_name})
            )
        index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        dst.put_manifest(index, OCI_INDEX)
    return index, images


def test_all_platforms_encrypted_each_decryptable_and_back(tmp_path: Path, registry: RegistryServer) -> None:
    index, images = _push_index(registry, "multi/app:v1")
    key = make_keys(tmp_path / "k", "ec256")
    insecure = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    enc = f"docker://{registry.host}/multi/enc:v1"
    src = f"docker://{registry.host}/multi/app:v1"
    assert main(["copy", "-q", "--all", *insecure, "--encryption-key", f"jwe:{key.public}", src, enc]) == 0

    out = registry_manifest(registry, "multi/enc", "v1", accept=OCI_INDEX)
    entries = out["manifests"]  # type: ignore[index]
    original = json.loads(index)["manifests"]
    assert [e["platform"] for e in entries] == [e["platform"] for e in original]
    for entry, image in zip(entries[:2], (images["linux/amd64"], images["linux/arm64"]), strict=True):
        assert entry["digest"] != image.digest
        child = registry_manifest(registry, "multi/enc", entry["digest"])
        assert all(str(x["mediaType"]).endswith("+encrypted") for x in child["layers"])  # type: ignore[index]
    assert entries[2]["digest"] == images["unknown/unknown"].digest  # the attestation, as it was

    # skopeo decrypts one platform of it back to the original image
    skopeo_copy(
        "--override-arch",
        "arm64",
        "--src-tls-verify=false",
        "--decryption-key",
        str(key.private),
        enc,
        f"oci:{tmp_path}/sk:arm64",
    )
    sk_index = json.loads((tmp_path / "sk" / "index.json").read_text())
    assert sk_index["manifests"][0]["digest"] == images["linux/arm64"].digest

    # and layerseal decrypts every platform back: the original index, byte for byte
    assert (
        main(
            [
                "copy",
                "-q",
                "--all",
                *insecure,
                "--decryption-key",
                str(key.private),
                enc,
                f"docker://{registry.host}/multi/back:v1",
            ]
        )
        == 0
    )
    back = registry_manifest(registry, "multi/back", "v1", accept=OCI_INDEX)
    assert [e["digest"] for e in back["manifests"]] == [e["digest"] for e in original]  # type: ignore[index]


def test_all_without_a_change_keeps_the_index_digest(
    tmp_path: Path, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    index, _ = _push_index(registry, "multi/app:v1")
    src = f"docker://{registry.host}/multi/app:v1"
    assert main(["copy", "--json", "--all", "--src-tls-verify=false", src, f"oci:{tmp_path}/out:v1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifest"] == sha256(index)
    assert report["images"][2] is None and len(report["images"]) == 3
    layout = json.loads((tmp_path / "out" / "index.json").read_text())
    assert layout["manifests"][0]["digest"] == sha256(index)
    assert (tmp_path / "out" / "blobs" / "sha256" / sha256(index)[7:]).read_bytes() == index


def test_all_refuses_a_platform(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["copy", "--all", "--platform", "linux/arm64", "oci:/nonexistent/a:v1", "oci:/nonexistent/b:v1"])
        == 2
    )
    assert "--all: expected no --platform" in capsys.readouterr().err


def test_inspect_shows_the_index_and_the_chosen_platform(
    registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    index, images = _push_index(registry, "multi/app:v1")
    ref = f"docker://{registry.host}/multi/app:v1"
    assert main(["inspect", "--json", "--tls-verify=false", "--platform", "linux/arm64", ref]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index"]["digest"] == sha256(index)
    assert [e["platform"] for e in summary["index"]["manifests"]] == [
        "linux/amd64",
        "linux/arm64",
        "unknown/unknown",
    ]
    assert summary["manifestDigest"] == images["linux/arm64"].digest
    assert main(["inspect", "--tls-verify=false", "--platform", "linux/arm64", ref]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"index {sha256(index)}  (3: linux/amd64, linux/arm64, unknown/unknown)")
