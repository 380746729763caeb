"""Throughput and memory of ``layerseal containerd decode`` (containerd's stream processor).

One encrypted layer per size (random bytes standing for the compressed tar; JWE key),
decrypted as containerd runs the processor: stdin from the blob, stdout to /dev/null,
``STREAM_PROCESSOR_MEDIATYPE`` set.  Rows:

* ``decode, payload on fd 3``: the descriptor and key come from imgcrypt's payload
  (the CRI's ``key_model = "node"``): spool + HMAC in one pass, then decrypt.
* ``decode, content store``: no payload (plain ``ctr``): spool, find the descriptor in a
  content store holding one manifest, HMAC pass, then decrypt; key from a keys directory.
* ``openssl: HMAC then CTR``: the public tool doing the same authenticate-then-release
  work, ``openssl dgst -mac HMAC`` over the blob then ``openssl enc -d -aes-256-ctr``
  (two processes, no spool: the blob is already a file).

Peak RSS must not grow with the layer size.  Files live on tmpfs (``BENCH_TMP``).  Prints a table and writes
``bench/results/containerd_decode.json``.

    .venv/bin/python bench/containerd_decode.py [--sizes 64,256] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import best_of, drop_tree, save, table, tool_version  # noqa: E402
from layerseal.containerd.contentstore import blobs_dir  # noqa: E402
from layerseal.containerd.payload import encode_payload  # noqa: E402
from layerseal.crypto.keys import generate_key, private_key_to_pem  # noqa: E402
from layerseal.crypto.keywrap import JweWrapper, LayerContext  # noqa: E402
from layerseal.crypto.layercipher import LayerEncryptor  # noqa: E402
from layerseal.image import mediatypes as mt  # noqa: E402
from layerseal.image.descriptor import Descriptor  # noqa: E402
from layerseal.image.digest import Digest  # noqa: E402
from layerseal.image.encryption import ANNOTATION_PUBOPTS, keys_annotation  # noqa: E402

CHUNK = 1 << 20
MEDIA = mt.encrypted_type(mt.OCI_LAYER_GZIP)


def make_layer(work: Path, size_mb: int) -> dict[str, Any]:
    key = generate_key("EC-P256")
    enc = LayerEncryptor()
    blob = work / f"layer-{size_mb}.enc"
    ph, bh = hashlib.sha256(), hashlib.sha256()
    chunk = os.urandom(CHUNK)
    with blob.open("wb") as fh:
        for _ in range(size_mb):
            ph.update(chunk)
            ct = enc.update(chunk)
            bh.update(ct)
            fh.write(ct)
    pub, priv = enc.finalize()
    plain_desc = Descriptor(mt.OCI_LAYER_GZIP, Digest("sha256", ph.hexdigest()), size_mb * CHUNK)
    name, value = keys_annotation(
        "jwe", [JweWrapper([key.public_key()]).wrap(priv, LayerContext(0, plain_desc, "b"))]
    )
    desc = Descriptor(
        MEDIA,
        Digest("sha256", bh.hexdigest()),
        size_mb * CHUNK,
        {ANNOTATION_PUBOPTS: pub.to_annotation(), name: value},
    )
    pem = private_key_to_pem(key)
    payload = work / f"payload-{size_mb}.bin"
    payload.write_bytes(encode_payload({"privkeys": [pem]}, desc.to_json()))
    keys = work / "keys"
    keys.mkdir(exist_ok=True)
    (keys / f"k{size_mb}.key").write_bytes(pem)
    root = work / "ctd"
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [desc.to_json()]}
    ).encode()
    blobs_dir(root).mkdir(parents=True, exist_ok=True)
    (blobs_dir(root) / Digest.of(manifest).hex).write_bytes(manifest)
    return {
        "blob": blob,
        "payload": payload,
        "keys": keys,
        "root": root,
        "symkey": priv.symkey,
        "nonce": priv.nonce,
    }


def shell(script: str, *args: str) -> list[str]:
    return ["bash", "-c", script, "bash", *args]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256", help="layer sizes in MiB")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    # tmpfs as the other benchmarks (BENCH_TMP to change): the blob, spool and keys live there
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    work = Path(tempfile.mkdtemp(prefix="bench-ctd-", dir=tmp))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")},
        "STREAM_PROCESSOR_MEDIATYPE": MEDIA,
    }
    decode = [sys.executable, "-m", "layerseal.cli.main", "containerd", "decode", "--spool-dir", str(work)]
    rows, results = [], []
    try:
        for size in sizes:
            layer = make_layer(work, size)
            cases = {
                "decode, payload on fd 3": shell(
                    f'exec "$@" <"{layer["blob"]}" 3<"{layer["payload"]}"', *decode
                ),
                "decode, content store": shell(
                    f'exec "$@" <"{layer["blob"]}"',
                    *decode,
                    "--payload-fd",
                    "-1",
                    "--decryption-keys-path",
                    str(layer["keys"]),
                    "--containerd-root",
                    str(layer["root"]),
                ),
                "openssl: HMAC then CTR": shell(
                    'openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" "$3" >/dev/null && '
                    'exec openssl enc -d -aes-256-ctr -K "$1" -iv "$2" -in "$3"',
                    layer["symkey"].hex(),
                    layer["nonce"].hex(),
                    str(layer["blob"]),
                ),
            }
            for name, cmd in cases.items():
                r = best_of(args.runs, cmd, env=env)
                mbps = size / r["min_s"]
                rows.append([name, size, r["min_s"], round(mbps, 1), r["peak_rss_mb"], r["cpu_s"]])
                results.append({"case": name, "size_mb": size, "mb_per_s": mbps, **r})
            os.unlink(layer["blob"])
    finally:
        drop_tree(work)
    print(
        table(
            "containerd stream processor: one encrypted layer, stdout to /dev/null",
            ["case", "MiB", "seconds", "MiB/s", "peak RSS MB", "CPU s"],
            rows,
        )
    )
    path = save("containerd_decode", {"openssl": tool_version(["openssl", "version"]), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
