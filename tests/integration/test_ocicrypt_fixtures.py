"""Images encrypted by skopeo 1.14.3 and buildah 1.28.2 (``tests/data/interop``) open with ``copy`` and ``pull``.

In every layout but ``same-compression`` the digest in ocicrypt's private options is the
*source* blob's (containers/image hands ocicrypt the descriptor before it compresses or
recompresses), not the decrypted blob's.  Decryption must authenticate with the HMAC,
compute the decrypted digest itself, and the layers must match the source's diff_ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.images import blob_path, manifest_of
from layerseal.cli.main import main
from layerseal.engine.decompress import decompressor
from layerseal.image import mediatypes as mt

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data" / "interop"
LAYOUTS = [
    ("skopeo-1.14.3", "same-compression"),
    ("skopeo-1.14.3", "zstd-recompressed"),
    ("skopeo-1.14.3", "from-uncompressed"),
    ("buildah-1.28.2", "push"),
]
KEYS = ["rsa2048.p8.pem", "ecp384.p8.pem"]


def source_diff_ids() -> list[str]:
    _, manifest = manifest_of(DATA / "src", "gz")
    config = json.loads(blob_path(DATA / "src", manifest["config"]["digest"]).read_bytes())  # type: ignore[index]
    return list(config["rootfs"]["diff_ids"])


def diff_id_of(layout: Path, layer: dict[str, str]) -> str:
    data = blob_path(layout, layer["digest"]).read_bytes()
    tar = b"".join(decompressor(mt.compression(layer["mediaType"]), what="test")([data]))
    return "sha256:" + hashlib.sha256(tar).hexdigest()


def writable_copy(tmp_path: Path, name: str) -> Path:
    """The fixture layout in *tmp_path* (the checked-in one stays untouched)."""
    out = tmp_path / name
    shutil.copytree(DATA / name, out)
    for p in [out, *out.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def test_fixture_private_digest_is_not_the_decrypted_digest() -> None:
    """The premise: the recompressed layouts record a digest other than the encrypted blob's plaintext."""
    from layerseal.crypto.keys import load_private_key
    from layerseal.crypto.keywrap import JweUnwrapper, LayerContext, open_private_options
    from layerseal.image.descriptor import Descriptor

    key = load_private_key((DATA / "keys" / KEYS[0]).read_bytes())
    sources = {str(d) for d in source_diff_ids()}
    _, src_manifest = manifest_of(DATA / "src", "gz")
    sources |= {str(x["digest"]) for x in src_manifest["layers"]}  # type: ignore[index]
    _, manifest = manifest_of(DATA / "skopeo-1.14.3", "zstd-recompressed")
    for i, layer in enumerate(manifest["layers"]):  # type: ignore[arg-type]
        desc = Descriptor.from_json(layer)
        priv = open_private_options(desc, LayerContext(i, desc, "fixture"), [JweUnwrapper([key])])
        assert str(priv.digest) in sources  # the gzip source blob, not the zstd result


# same-compression was encrypted for the RSA key only (see the README)
COPY_CASES = [(n, t, k) for n, t in LAYOUTS for k in KEYS if t != "same-compression" or k == KEYS[0]]


@pytest.mark.parametrize(("name", "tag", "key"), COPY_CASES)
def test_copy_decrypts_fixture(
    tmp_path: Path, name: str, tag: str, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    layout = writable_copy(tmp_path, name)
    out = tmp_path / "dec"
    with caplog.at_level(logging.DEBUG, logger="layerseal"):
        rc = main(
            [
                "copy",
                "-q",
                "--decryption-key",
                str(DATA / "keys" / key),
                f"oci:{layout}:{tag}",
                f"oci:{out}:v1",
            ]
        )
    assert rc == 0
    _, manifest = manifest_of(out, "v1")
    layers = manifest["layers"]  # type: ignore[index]
    assert not any(str(x["mediaType"]).endswith("+encrypted") for x in layers)  # type: ignore[union-attr]
    assert [diff_id_of(out, x) for x in layers] == source_diff_ids()  # type: ignore[arg-type, union-attr]
    assert all("enc." not in a for x in layers for a in x.get("annotations", {}))  # type: ignore[union-attr]
    differs = [r for r in caplog.records if "private options record" in r.getMessage()]
    if tag == "same-compression":
        assert not differs
    else:
        assert differs and all(r.levelno == logging.DEBUG for r in differs)


@pytest.mark.parametrize(("name", "tag"), LAYOUTS)
def test_pull_decrypts_fixture(tmp_path: Path, name: str, tag: str) -> None:
    layout = writable_copy(tmp_path, name)
    store, rootfs = tmp_path / "store", tmp_path / "rootfs"
    snapshots = tmp_path / "snapshots"
    args = ["pull", "--json", "--store", str(store), "--snapshots", str(snapshots), "--rootfs", str(rootfs)]
    args += ["--decryption-key", str(DATA / "keys" / KEYS[0]), f"oci:{layout}:{tag}"]
    assert main(args) == 0
    assert any(snapshots.iterdir())
    assert_rootfs_matches_source(tmp_path, rootfs)


def assert_rootfs_matches_source(tmp_path: Path, rootfs: Path) -> None:
    """Every file of *rootfs* and of the plain source image's rootfs, byte for byte."""
    files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file())
    assert files
    src_out = tmp_path / "src-rootfs"
    plain = tmp_path / "src-plain"
    if not plain.exists():
        shutil.copytree(DATA / "src", plain)
        for p in [plain, *plain.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert main(["pull", "--store", str(tmp_path / "s2"), "--rootfs", str(src_out), f"oci:{plain}:gz"]) == 0
    assert files == sorted(str(p.relative_to(src_out)) for p in src_out.rglob("*") if p.is_file())
    for f in files:
        assert (rootfs / f).read_bytes() == (src_out / f).read_bytes()


@pytest.mark.parametrize(("name", "tag"), LAYOUTS)
def test_encrypted_config_keeps_source_diff_ids(name: str, tag: str) -> None:
    """What pull checks against: the encrypted images' configs list the source's diff_ids."""
    _, manifest = manifest_of(DATA / name, tag)
    config = json.loads(blob_path(DATA / name, manifest["config"]["digest"]).read_bytes())  # type: ignore[index]
    assert config["rootfs"]["diff_ids"] == source_diff_ids()


@pytest.mark.parametrize(("name", "tag"), LAYOUTS[1:])
def test_reencrypt_fixture_records_the_decrypted_digest(tmp_path: Path, name: str, tag: str) -> None:
    """Re-encrypting (new layer keys) writes private options naming the blob actually encrypted."""
    from layerseal.crypto.keys import load_private_key
    from layerseal.crypto.keywrap import JweUnwrapper, LayerContext, open_private_options
    from layerseal.image.descriptor import Descriptor

    layout = writable_copy(tmp_path, name)
    out = tmp_path / "re"
    args = ["copy", "-q", "--decryption-key", str(DATA / "keys" / KEYS[0])]
    args += [
        "--encryption-key",
        f"jwe:{DATA / 'keys' / 'ecp384.pub.pem'}",
        f"oci:{layout}:{tag}",
        f"oci:{out}:v1",
    ]
    assert main(args) == 0
    key = load_private_key((DATA / "keys" / KEYS[1]).read_bytes())
    _, manifest = manifest_of(out, "v1")
    for i, layer in enumerate(manifest["layers"]):  # type: ignore[arg-type]
        desc = Descriptor.from_json(layer)
        priv = open_private_options(desc, LayerContext(i, desc, "re"), [JweUnwrapper([key])])
        dec = tmp_path / f"dec{i}"
        assert (
            main(
                [
                    "copy",
                    "-q",
                    "--decryption-key",
                    str(DATA / "keys" / KEYS[1]),
                    f"oci:{out}:v1",
                    f"oci:{dec}:v1",
                ]
            )
            == 0
        )
        _, plain = manifest_of(dec, "v1")
        assert str(priv.digest) == plain["layers"][i]["digest"]  # type: ignore[index]


# ---------------------------------------------------------------- the same cases, made live

PUB = [DATA / "keys" / "rsa2048.pub.pem", DATA / "keys" / "ecp384.pub.pem"]


def skopeo_encrypt(tmp_path: Path, src_tag: str, *extra: str) -> Path:
    src = writable_copy(tmp_path, "src")
    out = tmp_path / "live"
    keys = [a for k in PUB for a in ("--encryption-key", f"jwe:{k}")]
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "-q",
            *extra,
            *keys,
            f"oci:{src}:{src_tag}",
            f"oci:{out}:enc",
        ],
        check=True,
        capture_output=True,
    )
    return out


def buildah_push(tmp_path: Path) -> Path:
    src = writable_copy(tmp_path, "src")
    store = [
        "--storage-driver",
        "vfs",
        "--root",
        str(tmp_path / "bh-root"),
        "--runroot",
        str(tmp_path / "bh-run"),
    ]
    image = subprocess.run(
        ["buildah", *store, "pull", "-q", f"oci:{src}:gz"], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    keys = [a for k in PUB for a in ("--encryption-key", f"jwe:{k}")]
    out = tmp_path / "live"
    subprocess.run(
        ["buildah", *store, "push", "-q", *keys, image, f"oci:{out}:enc"], check=True, capture_output=True
    )
    return out


LIVE = {
    "skopeo-uncompressed-source": lambda p: skopeo_encrypt(p, "raw"),
    "skopeo-zstd-recompressed": lambda p: skopeo_encrypt(
        p, "gz", "--dest-compress-format", "zstd", "--dest-compress"
    ),
    "buildah-push-vfs": buildah_push,
}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_debian_tools_images_open_with_copy_and_pull(tmp_path: Path, case: str) -> None:
    from layerseal.crypto.keys import load_private_key
    from layerseal.crypto.keywrap import JweUnwrapper, LayerContext, open_private_options
    from layerseal.image.descriptor import Descriptor

    enc = LIVE[case](tmp_path)
    _, manifest = manifest_of(enc, "enc")
    layers = manifest["layers"]  # type: ignore[index]
    assert all(str(x["mediaType"]).endswith("+encrypted") for x in layers)  # type: ignore[union-attr]
    # the premise holds for the live images too: the recorded digest is not the decrypted blob's
    key = load_private_key((DATA / "keys" / KEYS[0]).read_bytes())
    desc = Descriptor.from_json(layers[0])  # type: ignore[index]
    priv = open_private_options(desc, LayerContext(0, desc, case), [JweUnwrapper([key])])
    for n, k in enumerate(KEYS):
        out = tmp_path / f"dec{n}"
        assert (
            main(
                ["copy", "-q", "--decryption-key", str(DATA / "keys" / k), f"oci:{enc}:enc", f"oci:{out}:v1"]
            )
            == 0
        )
        _, dec = manifest_of(out, "v1")
        assert [diff_id_of(out, x) for x in dec["layers"]] == source_diff_ids()  # type: ignore[index, union-attr]
        assert str(priv.digest) != dec["layers"][0]["digest"]  # type: ignore[index]
    rootfs = tmp_path / "rootfs"
    args = ["pull", "--store", str(tmp_path / "store"), "--rootfs", str(rootfs)]
    assert main([*args, "--decryption-key", str(DATA / "keys" / KEYS[1]), f"oci:{enc}:enc"]) == 0
    assert_rootfs_matches_source(tmp_path, rootfs)
