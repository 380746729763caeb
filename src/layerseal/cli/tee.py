"""``layerseal tee``: the simulated TEE platform (``tee init --dir D``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from layerseal.attest.sim_platform import DEFAULT_MEASUREMENT, init_platform


def _init(args: argparse.Namespace) -> int:
    info = init_platform(args.dir, measurement=args.measurement, svn=args.svn, debug=args.debug)
    out = {
        "directory": str(info.directory),
        "fingerprint": info.fingerprint,
        "certificate": str(info.directory / "platform-cert.pem"),
        "measurement": info.measurement,
        "svn": info.svn,
        "debug": info.debug,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"sim platform created in {info.directory}")
        print(f"  fingerprint  {info.fingerprint}")
        print(f"  certificate  {out['certificate']}  (register it with: layerseal broker platform register)")
        print(f"  measurement  {info.measurement}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tee", help="simulated TEE platform for development and tests")
    sub = parser.add_subparsers(dest="tee_command", metavar="ACTION")
    sub.required = True
    init = sub.add_parser(
        "init", help="create a sim platform: signing key (0600) and self-signed certificate"
    )
    init.add_argument("--dir", required=True, help="directory to create the platform in")
    init.add_argument(
        "--measurement", default=DEFAULT_MEASUREMENT, help="hex measurement the enclave reports"
    )
    init.add_argument("--svn", type=int, default=2, help="security version number the enclave reports")
    init.add_argument("--debug", action="store_true", help="simulate a debug enclave")
    init.add_argument("--json", action="store_true", help="print JSON")
    init.set_defaults(func=_init)
