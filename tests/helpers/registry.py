"""Small helpers for tests that talk to the real docker-registry or drive skopeo."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from support.registry_server import RegistryServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def skopeo_copy(*args: str) -> None:
    """``skopeo copy`` (no signature policy, quiet); raises if skopeo fails."""
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", *args], check=True, capture_output=True)


def registry_manifest(
    reg: RegistryServer, repo: str, tag: str, accept: str = OCI_MANIFEST
) -> dict[str, object]:
    """The manifest the registry serves for repo:tag, straight over HTTP."""
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def registry_blobs(reg: RegistryServer) -> set[str]:
    """Digests (hex) of every blob in the registry's storage."""
    root = reg.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {p.name for p in root.glob("*/*")}
