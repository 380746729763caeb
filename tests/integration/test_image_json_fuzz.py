"""Fuzzed image JSON through the CLI: ``copy``, ``inspect`` and ``pull`` of OCI layouts whose
index.json, nested index, manifest, config, ``oci-layout`` marker or encryption annotations
(``enc.pubopts``, ``enc.keys.jwe``) were mutated (deep nesting, lone surrogates, other types,
non-finite numbers, damaged text).  No traceback, exit codes only from the README's table,
a one-line error, and the destination unchanged.  Case counts are fixed and the generator
seeded, so a failure replays exactly.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from helpers.images import KeyPair, blob_path, make_image, make_keys, tree_snapshot
from layerseal.cli.main import main
from layerseal.image.digest import Digest
from support.json_fuzz import mutate_json

pytestmark = pytest.mark.integration

CASES = 240
EXIT_CODES = {0, 2, 3, 4, 5}  # README: 2 bad input, 3 integrity, 4 transport, 5 denied
PUBOPTS = "org.opencontainers.image.enc.pubopts"
JWE_KEYS = "org.opencontainers.image.enc.keys.jwe"
INDEX_MT = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
TARGETS = ("index.json", "nested index", "manifest", "config", "pubopts", "keys.jwe", "oci-layout")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyPair]:
    tmp = tmp_path_factory.mktemp("jsonfuzz")
    make_image(f"oci:{tmp}/plain:v1", compressions=("gzip", "zstd"), big=2000)
    key = make_keys(tmp / "keys", "ec256")
    argv = ["copy", "-q", "--encryption-key", f"jwe:{key.public}", f"oci:{tmp}/plain:v1", f"oci:{tmp}/enc:v1"]
    assert main(argv) == 0
    return tmp / "enc", key


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = str(Digest.of(data))
    blob_path(layout, digest).write_bytes(data)
    return digest, len(data)


def _load(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    return index, manifest


def _point_index(layout: Path, index: dict[str, Any], raw_manifest: bytes) -> None:
    entry = index["manifests"][0]
    entry["digest"], entry["size"] = _write_blob(layout, raw_manifest)
    (layout / "index.json").write_text(json.dumps(index))


def mutate_layout(rng: random.Random, layout: Path) -> str:
    """Apply one JSON mutation to *layout*, re-pointing digests so the parser sees it."""
    target = rng.choice(TARGETS)
    index, manifest = _load(layout)
    if target == "index.json":
        raw, label = mutate_json(rng, index)
        (layout / "index.json").write_bytes(raw)
    elif target == "oci-layout":
        raw, label = mutate_json(rng, {"imageLayoutVersion": "1.0.0"})
        (layout / "oci-layout").write_bytes(raw)
    elif target == "nested index":
        entry = dict(index["manifests"][0])
        entry.pop("annotations", None)
        entry["platform"] = {"architecture": "amd64", "os": "linux"}
        raw, label = mutate_json(rng, {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [entry]})
        digest, size = _write_blob(layout, raw)
        index["manifests"] = [
            {"mediaType": INDEX_MT, "digest": digest, "size": size, "annotations": {REF_NAME: "v1"}}
        ]
        (layout / "index.json").write_text(json.dumps(index))
    elif target == "manifest":
        raw, label = mutate_json(rng, manifest)
        _point_index(layout, index, raw)
    elif target == "config":
        config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
        raw, label = mutate_json(rng, config)
        manifest["config"]["digest"], manifest["config"]["size"] = _write_blob(layout, raw)
        _point_index(layout, index, json.dumps(manifest).encode())
    else:
        layer = rng.choice(manifest["layers"])
        name = PUBOPTS if target == "pubopts" else JWE_KEYS
        value = layer["annotations"][name]
        if target == "keys.jwe":
            value = value.split(",")[0]  # one JWE per recipient, comma-separated
        doc = json.loads(base64.b64decode(value))
        raw, label = mutate_json(rng, doc)
        layer["annotations"][name] = base64.b64encode(raw).decode()
        _point_index(layout, index, json.dumps(manifest).encode())
    return f"{target}: {label}"


def _commands(src: Path, dst: Path, key: KeyPair, rootfs: Path, store: Path) -> dict[str, list[str]]:
    return {
        "copy": ["copy", "-q", "--decryption-key", str(key.private), f"oci:{src}:v1", f"oci:{dst}:new"],
        "copy-encrypted": ["copy", "-q", f"oci:{src}:v1", f"oci:{dst}:new"],
        "inspect": ["inspect", f"oci:{src}:v1"],
        "pull": [
            "pull",
            "--decryption-key",
            str(key.private),
            "--store",
            str(store),
            "--rootfs",
            str(rootfs),
            f"oci:{src}:v1",
        ],
    }


def test_mutated_image_json_gives_one_line_errors_with_readme_exit_codes(
    base: tuple[Path, KeyPair], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout, key = base
    dst, store = tmp_path / "dst", tmp_path / "store"
    make_image(f"oci:{dst}:other", compressions=("gzip",), big=10)
    rng = random.Random("image-json-fuzz")
    crashes: dict[str, str] = {}
    seen: dict[int, int] = {}
    for i in range(CASES):
        src, rootfs = tmp_path / f"src{i}", tmp_path / f"rootfs{i}"
        shutil.copytree(layout, src)
        label = mutate_layout(rng, src)
        command = ("copy", "copy-encrypted", "inspect", "pull")[i % 4]
        before = tree_snapshot(dst)
        try:
            status = main(_commands(src, dst, key, rootfs, store)[command])
        except Exception as exc:  # the CLI would print a traceback and exit 1
            frames = traceback.extract_tb(exc.__traceback__)
            frame = [f for f in frames if "/layerseal/" in f.filename][-1]
            where = f"{type(exc).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
            crashes.setdefault(where, f"{command} {label}: {where}: {str(exc)[:120]}")
            capsys.readouterr()
            continue
        err = capsys.readouterr().err
        seen[status] = seen.get(status, 0) + 1
        assert status in EXIT_CODES, f"{command} {label}: exit {status}: {err}"
        if status:
            assert err.startswith("layerseal: error: ") and err.count("\n") == 1, (
                f"{command} {label}: {err!r}"
            )
            assert "Traceback" not in err
            assert tree_snapshot(dst) == before, f"{command} {label}: destination changed"
            assert not rootfs.exists(), f"{command} {label}: rootfs left behind"
            partial = [*store.rglob("*.tmp"), *(tmp_path / "store.snapshots").rglob("*.tmp")]
            assert not partial, f"{command} {label}: partial files {partial}"
        shutil.rmtree(src)
    assert not crashes, "\n".join(sorted(crashes.values()))
    assert seen.get(2, 0) > CASES // 4, seen  # most mutations are bad input


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("index", r"index\.json: expected JSON nested at most 64 deep, seen 1001 levels"),
        ("surrogate", r"expected strings of Unicode text, seen a lone UTF-16 surrogate escape"),
    ],
)
def test_cli_process_deep_index_and_lone_surrogate_exit_2_without_traceback(
    base: tuple[Path, KeyPair], tmp_path: Path, what: str, message: str
) -> None:
    layout, key = base
    src = tmp_path / "src"
    shutil.copytree(layout, src)
    index, manifest = _load(src)
    if what == "index":
        (src / "index.json").write_text(json.dumps(index)[:-1] + ',"x":' + "[" * 1000 + "]" * 1000 + "}")
    else:
        manifest["annotations"] = {"org.example.note": "\ud800"}
        _point_index(src, index, json.dumps(manifest).encode())
    dst = tmp_path / "dst"
    cmd = [sys.executable, "-m", "layerseal.cli.main", "copy", "-q", "--decryption-key", str(key.private)]
    r = subprocess.run([*cmd, f"oci:{src}:v1", f"oci:{dst}:v1"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not dst.exists()
