"""Streaming layer cipher throughput on a 1 GiB blob in page cache, beside openssl.

Measures layerseal's ``LayerEncryptor`` and ``LayerDecryptor`` (AES-256-CTR + HMAC-SHA256,
the ocicrypt cipher, decrypt includes the HMAC verification) reading the blob in 1 MiB
chunks, and compares with ``openssl speed`` (aes-256-ctr, hmac sha256, 16 KiB blocks) and
``openssl enc -aes-256-ctr`` over the same file.  Target: decrypt+verify >= 1.2 GB/s.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import save, table, timed
from layerseal.crypto.layercipher import LayerDecryptor, LayerEncryptor

SIZE = int(os.environ.get("BENCH_CRYPTO_BYTES", str(1 << 30)))
CHUNK = 4 << 20


def _timed_pass(path: Path, update: Callable[[bytes], object]) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            update(chunk)
    return time.perf_counter() - start


def layerseal_rates(blob: Path, sealed: Path) -> tuple[float, float, float]:
    """Encrypt *blob* (timed), write the ciphertext once (untimed), decrypt+verify it (timed)."""
    enc = LayerEncryptor()
    enc_secs = _timed_pass(blob, enc.update)
    _, priv = enc.finalize()
    writer = LayerEncryptor(priv.symkey, priv.nonce)
    with open(sealed, "wb") as out:
        _timed_pass(blob, lambda c: out.write(writer.update(c)))
    pub, priv = writer.finalize()
    rates = [SIZE / enc_secs / 1e6]
    for compute_digest in (False, True):
        dec = LayerDecryptor(pub, priv, compute_digest=compute_digest)
        dec_secs = _timed_pass(sealed, dec.update)
        dec_secs += _finalize_secs(dec)
        rates.append(SIZE / dec_secs / 1e6)
    return rates[0], rates[1], rates[2]


def _finalize_secs(dec: LayerDecryptor) -> float:
    start = time.perf_counter()
    dec.finalize()  # raises if the HMAC or digest did not match: the timing counts only real work
    return time.perf_counter() - start


def openssl_speed(args: list[str]) -> float:
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "2", "-bytes", "16384", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = [ln for ln in out.splitlines() if ln.strip() and re.search(r"\d+\.\d+k\s*$", ln)][-1]
    return float(line.split()[-1].rstrip("k")) * 1000 / 1e6  # 1000s of bytes/s -> MB/s


def main() -> int:
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    with tempfile.TemporaryDirectory(prefix="layerseal-bench-", dir=tmp) as d:
        blob = Path(d) / "blob"
        with open(blob, "wb") as f:
            for _ in range(SIZE // CHUNK):
                f.write(os.urandom(CHUNK))
        subprocess.run(["cat", str(blob)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        enc_rate, dec_rate, dec_digest_rate = layerseal_rates(blob, Path(d) / "sealed")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        key, iv = "11" * 32, "22" * 16
        enc_cmd = [
            "openssl",
            "enc",
            "-aes-256-ctr",
            "-K",
            key,
            "-iv",
            iv,
            "-in",
            str(blob),
            "-out",
            "/dev/null",
        ]
        ossl_enc = SIZE / timed(enc_cmd).seconds / 1e6
        mac_cmd = ["openssl", "dgst", "-sha256", "-hmac", "k" * 32, str(blob)]
        ossl_mac = SIZE / timed(mac_cmd).seconds / 1e6
    speed_ctr = openssl_speed(["-evp", "aes-256-ctr"])
    speed_hmac = openssl_speed(["-hmac", "sha256"])
    rows = [
        ["layerseal encrypt (CTR+HMAC+plaintext digest)", enc_rate],
        ["layerseal decrypt+verify (CTR+HMAC)", dec_rate],
        ["layerseal decrypt+verify+plaintext digest", dec_digest_rate],
        ["openssl enc -aes-256-ctr (same file)", ossl_enc],
        ["openssl dgst -hmac sha256 (same file)", ossl_mac],
        ["openssl speed -evp aes-256-ctr (16 KiB)", speed_ctr],
        ["openssl speed -hmac sha256 (16 KiB)", speed_hmac],
    ]
    print(
        table(f"crypto throughput, {SIZE / 2**30:.2f} GiB blob in page cache (MB/s)", ["what", "MB/s"], rows)
    )
    print(
        f"peak RSS of the benchmark process: {peak:.0f} MB; target decrypt+verify >= 1200 MB/s: "
        f"{'met' if dec_rate >= 1200 else 'NOT met'}"
    )
    path = save(
        "crypto_throughput",
        {
            "bytes": SIZE,
            "mb_per_s": {r[0]: r[1] for r in rows},
            "peak_rss_mb": peak,
            "target_decrypt_mb_s": 1200,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
