"""The same images unpacked by umoci and by ``layerseal pull``: the trees must be equal.

Compared for every path: type, mode, owner, mtime (to the ns), size, content, link
target, device number, xattrs, and which paths share an inode (hard-link groups).

Images: Debian packages from the apt cache (``dpkg-deb --fsys-tarfile``), several per
image so that upper layers write into the directories of lower ones, busybox-static, and
synthetic layers exercising every tar feature of issue 12: implicit directories, layers
without './' or end-of-archive blocks, hard links across layers, whiteouts and opaque
directories, sparse files (PAX 0.0/0.1/1.0), deep nesting (300 levels: umoci is slow beyond), ns mtimes, xattrs (empty
ones too), setuid, a 0o000 file, devices and fifos.  umoci needs root (as the engine).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from support.oci_images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, descriptor, dumps

LAYERSEAL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "layerseal"
APT_CACHE = Path("/var/cache/apt/archives")
PREFERRED_DEBS = ["autoconf", "automake", "apache2-utils", "aardvark-dns", "bison", "alsa-utils"]
MTIME = 1_700_000_000

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack (and device nodes) need root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


# -- building images -----------------------------------------------------------------------


def write_layout(directory: Path, tag: str, layers: list[bytes]) -> None:
    """An OCI layout with one manifest of gzip'd ``layers`` (uncompressed tars)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs = []
    for tar in layers:
        blob = gzip.compress(tar, compresslevel=1, mtime=0)
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
        descs.append(descriptor(OCI_LAYER_GZIP, blob))
    config = dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers],
            },
        }
    )
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": descs,
        }
    )
    (blobs / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
    (directory / "oci-layout").write_bytes(dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(OCI_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": tag})
        ],
    }
    (directory / "index.json").write_bytes(dumps(index))


def ti(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]], *, eof: bool = True) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    data = out.getvalue()
    if not eof:
        # what umoci 0.4.7's `insert` writes: the members, then nothing (no zero blocks)
        data = data.rstrip(b"\0")
        data += b"\0" * (-len(data) % 512)
    return data


def deb_layer(deb: Path) -> bytes:
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout


def cached_debs(n: int) -> list[Path]:
    found = []
    for name in PREFERRED_DEBS:
        found += sorted(APT_CACHE.glob(f"{name}_*.deb"))[:1]
    return found[:n]


def sparse_layer(tmp: Path, version: str) -> bytes:
    src = tmp / f"sparse-src-{version}"
    src.mkdir()
    with open(src / f"disk-{version}.img", "wb") as f:
        f.truncate(40 << 20)
        for i in range(12):
            f.seek(i * (3 << 20) + 512 * i)
            f.write(hashlib.sha256(str(i).encode()).digest() * (100 + i))
    os.utime(src / f"disk-{version}.img", (MTIME, MTIME))
    out = subprocess.run(
        ["tar", "-C", str(src), "--sparse",
         *(["--format=gnu"] if version == "gnu" else ["--format=posix", f"--sparse-version={version}"]),
         "--numeric-owner", "--owner=0", "--group=0", "-cf", "-", f"disk-{version}.img"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return out


def synthetic_layers(tmp: Path) -> list[bytes]:
    # umoci resolves each entry's parents anew (quadratic in depth): 300 levels keep this
    # test fast; the unit tests unpack and stack 1500
    deep = ["/".join(["n"] * i) for i in range(1, 301)]
    base: list[tuple[tarfile.TarInfo, bytes]] = [
        (ti(".", tarfile.DIRTYPE, 0o755), b""),
        (ti("tmp", tarfile.DIRTYPE, 0o1777, mtime=MTIME + 1), b""),
        (ti("root", tarfile.DIRTYPE, 0o700, mtime=MTIME + 2), b""),
        (ti("home", tarfile.DIRTYPE, 0o755), b""),
        (ti("home/alice", tarfile.DIRTYPE, 0o750, uid=1000, gid=1000, mtime=MTIME + 3), b""),
        (ti("etc", tarfile.DIRTYPE, 0o755), b""),
        (ti("etc/shadow", mode=0o000), b"root:*:19000:0:99999:7:::\n"),
        (ti("usr", tarfile.DIRTYPE, 0o755), b""),
        (ti("usr/bin", tarfile.DIRTYPE, 0o755), b""),
        (ti("usr/bin/perl", mode=0o755), b"#!/bin/perl\n" * 50),
        (ti("usr/bin/su", mode=0o4755), b"setuid"),
        (ti("usr/bin/wall", mode=0o2755, gid=5), b"setgid"),
        (ti("usr/bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox"), b""),
        (ti("dev", tarfile.DIRTYPE, 0o755), b""),
        (ti("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), b""),
        (ti("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0, gid=6), b""),
        (ti("dev/fifo", tarfile.FIFOTYPE, 0o600), b""),
        (
            ti(
                "attrs",
                mode=0o644,
                pax_headers={
                    "SCHILY.xattr.user.mime": "text/plain",
                    "SCHILY.xattr.user.empty": "",
                    "SCHILY.xattr.trusted.note": "kept as root",
                },
            ),
            b"attrs",
        ),
        (ti("ns", pax_headers={"mtime": "1700000000.123456789"}), b"ns"),
        (ti("old", tarfile.DIRTYPE, 0o755), b""),
        (ti("old/gone", mode=0o644), b"whited out"),
        (ti("old/kept", mode=0o644), b"kept"),
        (ti("opaque", tarfile.DIRTYPE, 0o711, mtime=MTIME + 4), b""),
        (ti("opaque/lower", mode=0o644), b"hidden by the opaque marker"),
        *((ti(d, tarfile.DIRTYPE, 0o755), b"") for d in deep),
        (ti(deep[-1] + "/bottom"), b"bottom"),
    ]
    # written like `layer add`: files only, no './', no directory entries, no end blocks
    added = [
        (ti("tmp/x"), b"x"),
        (ti("root/.profile", mode=0o600), b"PS1=#"),
        (ti("home/alice/notes", uid=1000, gid=1000, pax_headers={"mtime": "1700000005.000000001"}), b"n"),
        (ti("usr/bin/perl5.36", tarfile.LNKTYPE, linkname="usr/bin/perl"), b""),
        (ti(deep[-1] + "/added"), b"added"),
    ]
    changes = [
        (ti("keep-link", tarfile.LNKTYPE, linkname="old/gone"), b""),  # then its target is whited out
        (ti("old/.wh.gone"), b""),
        (ti("opaque", tarfile.DIRTYPE, 0o711, mtime=MTIME + 4), b""),
        (ti("opaque/.wh..wh..opq"), b""),
        (ti("opaque/upper"), b"upper"),
        (ti("usr/bin/perl5", tarfile.LNKTYPE, linkname="usr/bin/perl5.36"), b""),
        (
            ti("etc/shadow", mode=0o000, pax_headers={"mtime": "1700000009.999999999"}),
            b"root:!:19000::::::\n",
        ),
    ]
    return [
        tar_of(base),
        tar_of(added, eof=False),
        tar_of(changes),
        # old GNU sparse ('S') members make umoci 0.4.7 fail ("unknown typeflag"); the unit
        # tests check that format against GNU tar's own input instead
        *(sparse_layer(tmp, v) for v in ("0.0", "0.1", "1.0")),
    ]


# -- comparing trees -----------------------------------------------------------------------


def tree(root: Path) -> tuple[dict[str, tuple[object, ...]], set[frozenset[str]]]:
    """Every path's attributes, and the groups of paths sharing an inode."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    todo = [""]
    while todo:  # no recursion: the synthetic image is hundreds of directories deep
        rel = todo.pop()
        path = os.path.join(root, rel) if rel else str(root)
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        xattrs = {
            n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)
            if n != "security.selinux"
        }
        extra: object = None
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            extra = h.hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISDIR(st.st_mode):
            todo += [os.path.join(rel, n) for n in os.listdir(path)]
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
        out[rel or "."] = (
            kind,
            mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            size,
            extra,
            sorted(xattrs.items()),
        )
    return out, {frozenset(v) for v in inodes.values()}


def unpack_both(tmp: Path, layers: list[bytes]) -> tuple[Path, Path]:
    layout = tmp / "oci"
    write_layout(layout, "v1", layers)
    umoci = subprocess.run(
        ["umoci", "--log=error", "unpack", "--image", f"{layout}:v1", str(tmp / "bundle")],
        capture_output=True,
        text=True,
    )
    assert umoci.returncode == 0, umoci.stderr
    ours = subprocess.run(
        [
            str(LAYERSEAL),
            "pull",
            f"oci:{layout}:v1",
            "--rootfs",
            str(tmp / "rootfs"),
            "--store",
            str(tmp / "store"),
        ],
        capture_output=True,
        text=True,
    )
    assert ours.returncode == 0, ours.stderr
    return tmp / "bundle" / "rootfs", tmp / "rootfs"


def assert_same_tree(reference: Path, ours: Path) -> int:
    want, want_links = tree(reference)
    got, got_links = tree(ours)
    fields = ("type", "mode", "uid", "gid", "mtime_ns", "size", "content/target/device", "xattrs")
    diffs = []
    for path in sorted(set(want) | set(got)):
        a, b = want.get(path), got.get(path)
        if a is None or b is None:
            diffs.append(f"{path}: {'only in layerseal' if a is None else 'missing in layerseal'}")
            continue
        for name, x, y in zip(fields, a, b, strict=True):
            if x != y:
                diffs.append(f"{path}: {name}: umoci {x!r}, layerseal {y!r}")
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs[:40])
    assert want_links == got_links
    return len(want)


def test_synthetic_layers_unpack_like_umoci(tmp_path: Path) -> None:
    reference, ours = unpack_both(tmp_path, synthetic_layers(tmp_path))
    n = assert_same_tree(reference, ours)
    assert n > 300
    # the features are really there (so the comparison compared something)
    assert stat.S_IMODE(os.lstat(ours / "tmp").st_mode) == 0o1777
    assert os.lstat(ours / "usr/bin/perl5").st_ino == os.lstat(ours / "usr/bin/perl").st_ino
    assert os.lstat(ours / "ns").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.lstat(ours / "disk-1.0.img").st_size == 40 << 20
    assert os.lstat(ours / "disk-1.0.img").st_blocks * 512 < 1 << 20  # still sparse
    assert sorted(os.listdir(ours / "opaque")) == ["upper"]
    assert not (ours / "old/gone").exists()
    assert (ours / "keep-link").read_bytes() == b"whited out"


def test_debian_packages_unpack_like_umoci(tmp_path: Path) -> None:
    debs = cached_debs(4)
    if not debs:
        pytest.skip(f"no Debian packages of {PREFERRED_DEBS} in {APT_CACHE}")
    reference, ours = unpack_both(tmp_path, [deb_layer(d) for d in debs])
    assert assert_same_tree(reference, ours) > 50


def test_busybox_static_unpacks_like_umoci(tmp_path: Path) -> None:
    debs = sorted(APT_CACHE.glob("busybox-static_*.deb"))
    busybox = Path("/bin/busybox")
    if debs:
        layers = [deb_layer(debs[0])]
    elif busybox.exists():
        data = busybox.read_bytes()
        layers = [
            tar_of(
                [
                    (ti(".", tarfile.DIRTYPE, 0o755), b""),
                    (ti("bin", tarfile.DIRTYPE, 0o755), b""),
                    (ti("bin/busybox", mode=0o755), data),
                    (ti("bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox"), b""),
                    (ti("bin/ash", tarfile.LNKTYPE, linkname="bin/busybox"), b""),
                ]
            )
        ]
    else:
        pytest.skip("busybox-static is neither in the apt cache nor installed")
    reference, ours = unpack_both(tmp_path, layers)
    assert assert_same_tree(reference, ours) > 3


def test_size_limit_flags_on_pull(tmp_path: Path) -> None:
    bomb = tar_of([(ti("zeros"), bytes(20 << 20))])
    write_layout(tmp_path / "oci", "v1", [bomb])
    proc = subprocess.run(
        [str(LAYERSEAL), "pull", f"oci:{tmp_path}/oci:v1", "--rootfs", str(tmp_path / "rootfs"),
         "--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snaps"), "--max-layer-size", "8M"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "at most 8 MiB (the per-layer limit; raise it with --max-layer-size)" in proc.stderr
    assert not (tmp_path / "rootfs").exists()
    proc = subprocess.run(
        [str(LAYERSEAL), "pull", f"oci:{tmp_path}/oci:v1", "--rootfs", str(tmp_path / "rootfs"),
         "--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snaps"), "--max-entries", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "limit --max-entries: expected a positive number, seen 0" in proc.stderr
    proc = subprocess.run(
        [str(LAYERSEAL), "pull", f"oci:{tmp_path}/oci:v1", "--rootfs", str(tmp_path / "rootfs"),
         "--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snaps"), "--max-image-size", "64M"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rootfs/zeros").stat().st_size == 20 << 20
    assert json.loads((tmp_path / "oci/index.json").read_text())["manifests"]
