"""Latency of the ocicrypt keyprovider: one cmd invocation per layer, and gRPC UnWrapKey.

A real broker (uvicorn, SQLite) and a sim platform are started in a temporary directory.
cmd rows time one process from start to reply (median of --runs): keywrap, and keyunwrap
with a cached attestation token, through both entry points (``layerseal keyprovider``,
which loads the whole CLI, and ``python -m layerseal.keyprovider``).  The gRPC row times
one UnWrapKey call to a ``keyprovider serve`` process holding a token (median of
--grpc-calls).  Prints a table and writes ``bench/results/keyprovider.json``.

    .venv/bin/python bench/keyprovider.py [--runs 20] [--grpc-calls 200]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "broker"))
sys.path.insert(0, str(ROOT))

from brokerproc import start_broker  # noqa: E402

from bench.common import save, table  # noqa: E402
from layerseal.attest.sim_platform import SimAttester, init_platform  # noqa: E402
from layerseal.broker.masterkey import create_master_key_file  # noqa: E402
from layerseal.kbs.client import PublisherClient  # noqa: E402

DATA = ROOT / "tests" / "data" / "keyprovider"
CLI = str(Path(sys.executable).parent / "layerseal")
ENTRIES = {
    "layerseal keyprovider": [CLI, "keyprovider"],
    "python -m layerseal.keyprovider": [sys.executable, "-m", "layerseal.keyprovider"],
}
TARGET_CMD_MS = 150.0
TARGET_GRPC_MS = 5.0


def once(cmd: Sequence[str], stdin: bytes, env: dict[str, str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode().strip()[:400]}")
    return elapsed, done.stdout


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--grpc-calls", type=int, default=200)
    # known args only: ``python -m bench keyprovider`` leaves the benchmark name in argv
    args, _ = parser.parse_known_args(argv)
    import grpc

    from layerseal.keyprovider.grpcserver import call

    work = Path(tempfile.mkdtemp(prefix="kp-bench-"))
    key_file = work / "master.key"
    create_master_key_file(key_file)
    admin_file = work / "admin.token"
    broker = start_broker(
        str(work / "broker.db"), work, master_key_file=key_file, admin_token_file=admin_file
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        admin = PublisherClient(broker.url, admin_file.read_text().strip())
        platform = work / "sim"
        init_platform(platform)
        admin.register_platform((platform / "platform-cert.pem").read_bytes())
        token = admin.create_token("acme", ["keys:write", "keys:read", "policy:write"])[1]
        with PublisherClient(broker.url, token) as acme:
            acme.add_refvalues("allowed-measurements", [SimAttester(platform).measurement])
        token_file = work / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
        flags = [
            "--name",
            "myprov",
            "--kbs",
            broker.url,
            "--repo",
            "acme/bench",
            "--token-file",
            str(token_file),
        ]
        flags += ["--sim-platform", str(platform), "--cache-dir", str(work / "cache")]
        wrap_req = (DATA / "skopeo-1.14-keywrap-request.json").read_bytes()
        _, reply = once([*ENTRIES["python -m layerseal.keyprovider"], *flags], wrap_req, env)
        packet = base64.b64decode(json.loads(reply)["keywrapresults"]["annotation"])
        unwrap_doc = json.loads((DATA / "skopeo-1.14-keyunwrap-request.json").read_bytes())
        unwrap_doc["keyunwrapparams"]["annotation"] = base64.b64encode(packet).decode()
        unwrap_req = json.dumps(unwrap_doc).encode()
        once([*ENTRIES["python -m layerseal.keyprovider"], *flags], unwrap_req, env)  # fills the token cache

        rows: list[list[Any]] = []
        results: dict[str, Any] = {"runs": args.runs, "grpc_calls": args.grpc_calls, "cases": {}}

        def record(case: str, samples: list[float], target: float | None) -> None:
            med = median_ms(samples)
            verdict = "-" if target is None else ("yes" if med <= target else "NO")
            rows.append(
                [case, med, min(samples) * 1000, "-" if target is None else f"<= {target:g}", verdict]
            )
            results["cases"][case] = {
                "median_ms": med,
                "min_ms": min(samples) * 1000,
                "samples": len(samples),
                "target_ms": target,
                "meets_target": None if target is None else med <= target,
            }

        record(
            "python startup (python -c pass)",
            [once([sys.executable, "-c", "pass"], b"", env)[0] for _ in range(args.runs)],
            None,
        )
        for label, entry in ENTRIES.items():
            record(
                f"cmd keywrap via {label}",
                [once([*entry, *flags], wrap_req, env)[0] for _ in range(args.runs)],
                TARGET_CMD_MS,
            )
            record(
                f"cmd keyunwrap, cached token, via {label}",
                [once([*entry, *flags], unwrap_req, env)[0] for _ in range(args.runs)],
                TARGET_CMD_MS,
            )
        fast = ENTRIES["python -m layerseal.keyprovider"]
        record(
            "cmd keyunwrap, --no-cache (attests each time)",
            [once([*fast, *flags, "--no-cache"], unwrap_req, env)[0] for _ in range(max(5, args.runs // 2))],
            None,
        )

        server = subprocess.Popen(
            [*fast, "serve", "--grpc", "127.0.0.1:0", *flags], stderr=subprocess.PIPE, env=env
        )
        assert server.stderr is not None
        address = server.stderr.readline().decode().split()[-1]
        with grpc.insecure_channel(address) as channel:
            call(channel, "UnWrapKey", unwrap_req)  # connect and take the token from the cache
            samples = []
            for _ in range(args.grpc_calls):
                start = time.perf_counter()
                call(channel, "UnWrapKey", unwrap_req)
                samples.append(time.perf_counter() - start)
            record("gRPC UnWrapKey, cached token", samples, TARGET_GRPC_MS)
            samples = []
            for _ in range(max(20, args.grpc_calls // 4)):
                start = time.perf_counter()
                call(channel, "WrapKey", wrap_req)
                samples.append(time.perf_counter() - start)
            record("gRPC WrapKey", samples, None)
        admin.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        broker.kill()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(table("ocicrypt keyprovider latency (ms)", ["case", "median", "min", "target", "met"], rows))
    print(f"wrote {save('keyprovider', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
