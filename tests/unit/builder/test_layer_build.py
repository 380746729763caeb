"""Layers built from files: reproducible, streamed, and the builder thread stops with its consumer."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path

from isal import igzip

from layerseal.builder.layeradd import layer_stream
from layerseal.builder.tarlayer import write_layer_from_paths


def tree(root: Path) -> Path:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "b.txt").write_text("b")
    (root / "d" / "a.txt").write_text("a")
    (root / "d" / "sub" / "big.bin").write_bytes(os.urandom(3_000_000))
    (root / "d" / "link").symlink_to("a.txt")
    return root / "d"


def test_same_files_give_the_same_layer_and_mtimes_are_fixed(tmp_path: Path) -> None:
    src = tree(tmp_path)
    one, two = io.BytesIO(), io.BytesIO()
    d1 = write_layer_from_paths(one, {"app": src})
    os.utime(src / "a.txt", (1_700_000_000, 1_700_000_000))
    d2 = write_layer_from_paths(two, {"app": src})
    assert d1 == d2 and hashlib.sha256(one.getvalue()).digest() == hashlib.sha256(two.getvalue()).digest()
    kept = write_layer_from_paths(io.BytesIO(), {"app": src}, keep_mtime=True)
    assert kept != d1
    with igzip.open(io.BytesIO(one.getvalue())) as f, tarfile.open(fileobj=f, mode="r|") as t:
        members = [(m.name, m.mtime, m.uid, m.gid, m.type) for m in t]
    names = [m[0] for m in members]
    assert names == sorted(names) and "app/link" in names and "app/sub/big.bin" in names
    assert {(m[1], m[2], m[3]) for m in members} == {(0, 0, 0)}


def test_layer_stream_gives_diff_id_of_the_uncompressed_tar(tmp_path: Path) -> None:
    src = tree(tmp_path)
    chunks, diff_id = layer_stream({"app": src}, "gzip", keep_mtime=False)
    blob = b"".join(chunks)
    with igzip.open(io.BytesIO(blob)) as f:
        assert diff_id.result().hex == hashlib.sha256(f.read()).hexdigest()


def test_stopping_the_consumer_stops_the_tar_thread(tmp_path: Path) -> None:
    src = tree(tmp_path)
    for i in range(20):
        (src / f"more{i}.bin").write_bytes(os.urandom(1_000_000))
    before = threading.active_count()
    chunks, _ = layer_stream({"app": src}, "none", keep_mtime=False)
    next(chunks)
    chunks.close()  # what a failed upload does to its source
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
