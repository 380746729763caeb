"""The whole flow with a real broker: publish with per-layer broker keys, add a layer, rotate, pull, run."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Deployment, deploy
from helpers.images import make_busybox_image, make_keys, manifest_of
from helpers.registry import registry_manifest, skopeo_copy
from layerseal.cli.main import main
from layerseal.image.descriptor import Platform
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]
INSECURE = ["--src-tls-verify=false", "--dest-tls-verify=false"]


@pytest.fixture
def world(tmp_path: Path, sim_platform_dir: Path) -> Iterator[tuple[Deployment, RegistryServer, str]]:
    d = deploy(str(tmp_path / "broker.db"), tmp_path, sim_platform_dir)
    token = d.acme._headers["Authorization"].removeprefix("Bearer ")
    try:
        with RegistryServer(tmp_path / "registry") as reg:
            yield d, reg, token
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


def publish(tmp_path: Path, d: Deployment, reg: RegistryServer, token: str, *extra: str) -> str:
    make_busybox_image(f"oci:{tmp_path}/img:v1", extra_layers=2)
    ref = f"docker://{reg.host}/acme/app:v1"
    args = ["copy", "-q", *INSECURE, "--encryption-key", f"kbs:{d.url}", "--kbs-token", token, *extra]
    assert main([*args, f"oci:{tmp_path}/img:v1", ref]) == 0
    return ref


def engine(
    d: Deployment, tmp_path: Path, ref: str, verb: str, *rest: str
) -> subprocess.CompletedProcess[str]:
    cmd = [*LAYERSEAL, verb, "--src-tls-verify=false", "--kbs", d.url, "--sim-platform", str(d.platform_dir)]
    cmd += ["--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snaps"), ref, *rest]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_every_layer_has_its_own_broker_key_and_the_enclave_runs_it(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    jwe_key = make_keys(tmp_path / "k", "ec256")
    ref = publish(tmp_path, d, reg, token, "--encryption-key", f"jwe:{jwe_key.public}")
    keys = d.acme.list_keys("acme/app")
    layers = registry_manifest(reg, "acme/app", "v1")["layers"]
    assert len(keys) == len(layers) == 3
    assert len({k["layer_digest"] for k in keys}) == 3  # one key per portion
    for layer in layers:  # type: ignore[attr-defined]
        names = set(layer["annotations"])
        assert {
            "org.opencontainers.image.enc.keys.provider.attestation-agent",
            "org.opencontainers.image.enc.keys.jwe",
        } <= names
    # interop kept: skopeo decrypts with the jwe: recipient
    skopeo_copy(
        "--src-tls-verify=false", "--decryption-key", str(jwe_key.private), ref, f"oci:{tmp_path}/sk:v1"
    )
    assert manifest_of(tmp_path / "sk", "v1")[0] == manifest_of(tmp_path / "img", "v1")[0]
    # the enclave attests, gets all three keys in one batch and runs the container
    r = engine(d, tmp_path, ref, "run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello from the enclave"
    audit = d.acme.audit()
    releases = [e for e in audit if e.get("action") == "release" and e.get("decision") == "ok"]
    assert any(
        len(json.loads(e["keys"]) if isinstance(e["keys"], str) else e["keys"]) == 3 for e in releases
    ), releases


def test_policy_refusing_some_layers_names_them_and_leaves_no_rootfs(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    ref = publish(tmp_path, d, reg, token)
    keys = sorted(d.acme.list_keys("acme/app"), key=lambda k: k["layer_digest"])
    refused = keys[0]
    d.acme.set_policy(
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "svn", "greaterOrEquals": 99}]}]},
        scope="key",
        target=refused["key_id"],
    )
    r = engine(d, tmp_path, ref, "pull", "--rootfs", str(tmp_path / "rootfs"))
    assert r.returncode == 5, r.stderr
    assert "no key for 1 of 3 encrypted layer(s)" in r.stderr
    assert refused["key_id"] in r.stderr and "svn" in r.stderr
    assert not (tmp_path / "rootfs").exists()


def test_revoked_key_refuses_a_cached_snapshot(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    ref = publish(tmp_path, d, reg, token)
    first = engine(d, tmp_path, ref, "pull", "--rootfs", str(tmp_path / "r1"))
    assert first.returncode == 0, first.stderr
    snapshots = tmp_path / "snaps" / "snap"
    assert len(list(snapshots.iterdir())) == 3  # decrypted snapshots are cached
    victim = d.acme.list_keys("acme/app")[0]
    d.acme.revoke_key(victim["key_id"])
    second = engine(d, tmp_path, ref, "pull", "--rootfs", str(tmp_path / "r2"))
    assert second.returncode == 5 and "revoked" in second.stderr
    assert not (tmp_path / "r2").exists()


def test_layer_add_creates_a_key_for_the_new_portion_only(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    ref = publish(tmp_path, d, reg, token)
    before = {k["key_id"]: k for k in d.acme.list_keys("acme/app")}
    old = registry_manifest(reg, "acme/app", "v1")
    files = tmp_path / "files"
    files.mkdir()
    (files / "motd").write_text("added later\n")
    v2 = f"docker://{reg.host}/acme/app:v2"
    args = [
        "layer",
        "add",
        "-q",
        *INSECURE,
        ref,
        f"{files}/motd:/etc/motd",
        "--encryption-key",
        f"kbs:{d.url}",
        "--kbs-token",
        token,
    ]
    assert main([*args, "-m", "motd", v2]) == 0
    after = {k["key_id"]: k for k in d.acme.list_keys("acme/app")}
    new_ids = set(after) - set(before)
    assert len(new_ids) == 1
    new = registry_manifest(reg, "acme/app", "v2")
    assert new["layers"][:3] == old["layers"]  # type: ignore[index]  # older layers and their keys untouched
    added_layer = new["layers"][3]  # type: ignore[index]
    assert after[new_ids.pop()]["layer_digest"] != added_layer["digest"]  # the key names the plaintext digest
    r = engine(d, tmp_path, v2, "run", "--", "/bin/cat", "/etc/motd")
    assert (r.returncode, r.stdout) == (0, "added later\n"), r.stderr
    assert main(["inspect", "--src-tls-verify=false", v2]) == 0


def rotate(d: Deployment, token: str, src: str, dst: str, *flags: str) -> int:
    return main(["keys", "rotate", "-q", *INSECURE, "--kbs", d.url, "--kbs-token", token, *flags, src, dst])


def test_rotation_rewrites_annotations_only_and_force_retires_what_v1_uses(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    ref = publish(tmp_path, d, reg, token)
    blobs_dir = reg.storage / "docker" / "registry" / "v2" / "blobs"
    count = len(list(blobs_dir.glob("sha256/*/*")))
    v2 = f"docker://{reg.host}/acme/app:v2"
    capsys.readouterr()
    assert rotate(d, token, ref, v2, "--retire-previous", "--force") == 0
    # v1 keeps the retired versions: said on stderr, since --force was asked for
    assert f"docker://{reg.host}/acme/app:v1" in capsys.readouterr().err
    assert len(list(blobs_dir.glob("sha256/*/*"))) == count + 1  # only the new manifest
    old, new = registry_manifest(reg, "acme/app", "v1"), registry_manifest(reg, "acme/app", "v2")
    assert [x["digest"] for x in old["layers"]] == [x["digest"] for x in new["layers"]]  # type: ignore[attr-defined]
    assert old["layers"] != new["layers"]
    assert engine(d, tmp_path, v2, "pull", "--rootfs", str(tmp_path / "new")).returncode == 0
    stale = engine(d, tmp_path, ref, "pull", "--rootfs", str(tmp_path / "old"))
    assert stale.returncode == 5 and "retired" in stale.stderr


def layer_add(tmp_path: Path, d: Deployment, reg: RegistryServer, token: str, src: str, tag: str) -> str:
    """v2 = v1 plus one layer: the first three layers (and their key packets) are shared."""
    files = tmp_path / f"files-{tag}"
    files.mkdir()
    (files / "motd").write_text(f"{tag}\n")
    dst = f"docker://{reg.host}/acme/app:{tag}"
    args = ["layer", "add", "-q", *INSECURE, src, f"{files}/motd:/etc/motd"]
    assert main([*args, "--encryption-key", f"kbs:{d.url}", "--kbs-token", token, dst]) == 0
    return dst


def kids(manifest: dict[str, object]) -> list[str]:
    out = []
    for layer in manifest["layers"]:  # type: ignore[attr-defined]
        blob = layer["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"]
        out.append(json.loads(base64.b64decode(blob))["kid"])
    return out


def tag_kids(reg: RegistryServer, tag: str) -> list[str]:
    """The key ids the manifest of acme/app:*tag* in *reg* names, layer by layer."""
    return kids(registry_manifest(reg, "acme/app", tag))


def v1_and_v2(tmp_path: Path, d: Deployment, reg: RegistryServer, token: str) -> tuple[str, str]:
    """Publish v1, then v2 = v1 plus one layer; their references."""
    v1 = publish(tmp_path, d, reg, token)
    return v1, layer_add(tmp_path, d, reg, token, v1, "v2")


def test_rotation_refuses_to_retire_keys_another_tag_uses_and_names_it(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    v1, v2 = v1_and_v2(tmp_path, d, reg, token)
    before = registry_manifest(reg, "acme/app", "v2")
    capsys.readouterr()
    assert rotate(d, token, v2, v2, "--retire-previous") == 2
    err = capsys.readouterr().err
    assert f"docker://{reg.host}/acme/app:v1 (3 key version(s))" in err, err
    assert "--all-tags" in err and "--force" in err
    assert "acme/app:v2 (" not in err  # the tag being rewritten is no other user
    # nothing changed: no version retired, no manifest rewritten
    assert registry_manifest(reg, "acme/app", "v2") == before
    assert all(v["status"] == "active" for k in d.acme.list_keys("acme/app") for v in k["versions"])
    assert engine(d, tmp_path, v1, "pull", "--rootfs", str(tmp_path / "r1")).returncode == 0


def test_all_tags_rotates_every_tag_sharing_the_keys_and_both_still_pull(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    v1, v2 = v1_and_v2(tmp_path, d, reg, token)
    old_v1 = tag_kids(reg, "v1")
    assert rotate(d, token, v2, v2, "--retire-previous", "--all-tags") == 0
    new_v1, new_v2 = tag_kids(reg, "v1"), tag_kids(reg, "v2")
    assert set(new_v1).isdisjoint(old_v1)  # v1 rewritten to the new versions
    assert new_v2[:3] == new_v1  # one rotation per key: both tags name the same new versions
    statuses = {
        (k["key_id"], v["version"]): v["status"] for k in d.acme.list_keys("acme/app") for v in k["versions"]
    }
    assert sorted(statuses.values()) == ["active"] * 4 + ["retired"] * 4
    r1 = engine(d, tmp_path, v1, "pull", "--rootfs", str(tmp_path / "r1"))
    assert r1.returncode == 0, r1.stderr
    r2 = engine(d, tmp_path, v2, "run", "--", "/bin/cat", "/etc/motd")
    assert (r2.returncode, r2.stdout) == (0, "v2\n"), r2.stderr


def test_tag_scan_follows_tag_list_pagination(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    from layerseal.builder.rotate import RegistryTags, find_tag_uses
    from layerseal.registry.client import RegistryClient
    from layerseal.registry.options import RegistryOptions

    d, reg, token = world
    v1 = publish(tmp_path, d, reg, token)
    layer_add(tmp_path, d, reg, token, v1, "v2")
    layer_add(tmp_path, d, reg, token, v1, "v3")
    versions = {(k["key_id"], k["current_version"]) for k in d.acme.list_keys("acme/app")}
    first = {tuple(x.rsplit("/", 1)[1].split(".")) for x in kids(registry_manifest(reg, "acme/app", "v1"))}
    shared = {(k, int(v)) for k, v in first}
    assert shared < versions
    with RegistryClient(reg.host, RegistryOptions(tls_verify=False), repository="acme/app") as client:
        store = RegistryTags(client, reg.host, "acme/app", writable=False, page_size=1)
        uses = find_tag_uses([store], shared, [(store.name, "v2")])
    assert [(u.tag, len(u.versions)) for u in uses] == [("v1", 3), ("v3", 3)]


def test_broker_down_during_layer_add(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    ref = publish(tmp_path, d, reg, token)
    before = registry_manifest(reg, "acme/app", "v1")
    for b in d.brokers:
        b.kill()
    files = tmp_path / "f"
    files.mkdir()
    (files / "x").write_text("x")
    args = [
        "layer",
        "add",
        "-q",
        *INSECURE,
        ref,
        str(files),
        "--encryption-key",
        f"kbs:{d.url}",
        "--kbs-token",
        token,
        ref,
    ]
    status = main(args)
    err = capsys.readouterr().err
    assert status == 4 and "broker" in err.lower()
    assert registry_manifest(reg, "acme/app", "v1") == before  # the previous manifest is still served
    with pytest.raises(urllib.error.HTTPError):
        registry_manifest(reg, "acme/app", "v2")


def test_keys_list_has_headers_status_iso_times_and_versions_unlike_tags(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    v1 = publish(tmp_path, d, reg, token)
    keys = sorted(d.acme.list_keys("acme/app"), key=lambda k: k["key_id"])
    rotated, revoked, unused = (k["key_id"] for k in keys)
    assert rotate(d, token, v1, v1, "--retire-previous") == 0  # rotates all three; only v1 uses them
    d.acme.revoke_key(revoked)
    d.acme.mark_unused(unused)
    capsys.readouterr()
    assert main(["keys", "list", "--kbs", d.url, "--kbs-token", token, "--repository", "acme/app"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = "KEY ID REPOSITORY LAYER (plaintext digest) STATUS VERSIONS CREATED (UTC)"
    assert " ".join(lines[0].split()) == header
    by_id = {line.split()[0]: line for line in lines[1:]}
    assert set(by_id) == {rotated, revoked, unused}
    assert " active " in by_id[rotated] and "#2 active, #1 retired" in by_id[rotated]
    assert " revoked " in by_id[revoked] and " unused " in by_id[unused]
    assert all(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", line) for line in lines[1:])
    assert not re.search(r"\bv\d\b", "\n".join(lines))  # no 'v2' that reads like an image tag
    assert main(["keys", "list", "--json", "--kbs", d.url, "--kbs-token", token]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {k["key_id"]: k["status"] for k in doc} == {
        rotated: "active",
        revoked: "revoked",
        unused: "unused",
    }
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", k["created"]) for k in doc)
    assert all(isinstance(k["versions"], list) for k in doc)


def test_index_tags_are_found_through_their_children_and_rewritten_with_all_tags(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    v1 = publish(tmp_path, d, reg, token)
    child = json.dumps(registry_manifest(reg, "acme/app", "v1")).encode()
    child_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(child).hexdigest(),
        "size": len(child),
        "platform": Platform.host().to_json(),  # the engine picks this host's entry
    }
    for ref, body, media_type in [
        (child_desc["digest"], child, child_desc["mediaType"]),
        ("multi", json.dumps({"schemaVersion": 2, "manifests": [child_desc]}).encode(), OCI_INDEX),
    ]:
        put = urllib.request.Request(
            f"{reg.url}/v2/acme/app/manifests/{ref}",
            data=body,
            method="PUT",
            headers={"Content-Type": media_type},
        )
        urllib.request.urlopen(put).close()
    capsys.readouterr()
    assert rotate(d, token, v1, v1, "--retire-previous") == 2
    assert f"docker://{reg.host}/acme/app:multi (3 key version(s))" in capsys.readouterr().err
    assert rotate(d, token, v1, v1, "--retire-previous", "--all-tags") == 0
    index = registry_manifest(reg, "acme/app", "multi", OCI_INDEX)
    new_child = index["manifests"][0]  # type: ignore[index]
    assert new_child["digest"] != child_desc["digest"] and new_child["platform"] == child_desc["platform"]
    rewritten = registry_manifest(reg, "acme/app", new_child["digest"])
    assert kids(rewritten) == kids(registry_manifest(reg, "acme/app", "v1"))
    multi = f"docker://{reg.host}/acme/app:multi"
    r = engine(d, tmp_path, multi, "pull", "--rootfs", str(tmp_path / "multi"))
    assert r.returncode == 0, r.stderr


def test_rotating_into_a_new_repository_lists_the_source_tags_and_tolerates_no_tags_yet(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, reg, token = world
    v1 = publish(tmp_path, d, reg, token)
    fresh = f"docker://{reg.host}/acme/fresh:v1"  # a repository with no tag yet (tags/list: 404)
    capsys.readouterr()
    assert rotate(d, token, v1, fresh, "--retire-previous") == 2
    assert f"docker://{reg.host}/acme/app:v1 (3 key version(s))" in capsys.readouterr().err
    # the source's repository is read, not rewritten: --all-tags says so instead of writing there
    assert rotate(d, token, v1, fresh, "--retire-previous", "--all-tags") == 2
    assert "rotate those with their own repository as destination" in capsys.readouterr().err
    assert rotate(d, token, v1, fresh, "--retire-previous", "--force") == 0
    assert engine(d, tmp_path, fresh, "pull", "--rootfs", str(tmp_path / "fresh")).returncode == 0


def test_all_tags_renews_only_the_shared_keys_of_the_other_tags(
    world: tuple[Deployment, RegistryServer, str], tmp_path: Path
) -> None:
    d, reg, token = world
    v1, v2 = v1_and_v2(tmp_path, d, reg, token)
    own = tag_kids(reg, "v2")[3]
    assert rotate(d, token, v1, v1, "--retire-previous", "--all-tags") == 0
    new_v1, new_v2 = tag_kids(reg, "v1"), tag_kids(reg, "v2")
    assert new_v2 == [*new_v1, own]  # v2's own layer key is not v1's rotation: left as it was
    versions = sorted(len(k["versions"]) for k in d.acme.list_keys("acme/app"))
    assert versions == [1, 2, 2, 2]
    r = engine(d, tmp_path, v2, "run", "--", "/bin/cat", "/etc/motd")
    assert (r.returncode, r.stdout) == (0, "v2\n"), r.stderr
