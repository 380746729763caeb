"""``layerseal tee``: the simulated TEE platform (``tee init``), what this guest can attest as
(``tee info``) and its evidence for debugging (``tee evidence --nonce N``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from layerseal.cli._constants import HASH_ALGORITHMS, TEE_CHOICES
from layerseal.cli._subcommands import command_group


def _init(args: argparse.Namespace) -> int:
    # the platform code (X.509, EC keys) loads only for init: not for --help or the other actions
    from layerseal.attest.sim_platform import DEFAULT_MEASUREMENT, init_platform

    measurement = DEFAULT_MEASUREMENT if args.measurement is None else args.measurement
    info = init_platform(args.dir, measurement=measurement, svn=args.svn, debug=args.debug)
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


def _info(args: argparse.Namespace) -> int:
    from layerseal.attest.attesters import detect

    found = detect()
    if args.json:
        probes = [{"interface": p.interface, "present": p.present, "detail": p.detail} for p in found.probes]
        print(json.dumps({"tee": found.tee, "why": found.why, "probes": probes}, indent=2))
        return 0
    print(f"tee: {found.tee} ({found.why})")
    for p in found.probes:
        print(f"  {'+' if p.present else '-'} {p.interface:<14} {p.detail}")
    return 0


def _evidence(args: argparse.Namespace) -> int:
    # a throwaway key: the evidence binds its public half, as a real attestation would; the
    # private half is never printed nor kept
    from layerseal.attest.attesters import make_attester
    from layerseal.attest.binding import report_data
    from layerseal.keyprovider import enclavekey

    pubkey = enclavekey.tee_pubkey(enclavekey.generate())
    attester = make_attester(args.tee, args.sim_platform)
    rd = report_data(args.nonce, pubkey, "", args.hash)
    out = {
        "tee": attester.tee,
        "runtime-data": {"nonce": args.nonce, "tee-pubkey": pubkey},
        "report-data": rd.hex(),
        "evidence": attester.evidence(rd),
    }
    print(json.dumps(out, indent=2))
    return 0


def register(subparsers: Any) -> None:
    sub = command_group(subparsers, "tee", "TEE detection and evidence; the simulated TEE platform")
    init = sub.add_parser(
        "init", help="create a sim platform: signing key (0600) and self-signed certificate"
    )
    init.add_argument("--dir", required=True, help="directory to create the platform in")
    # default None, meaning sim_platform.DEFAULT_MEASUREMENT (not imported with the parser)
    init.add_argument("--measurement", help="hex measurement the enclave reports")
    init.add_argument("--svn", type=int, default=2, help="security version number the enclave reports")
    init.add_argument("--debug", action="store_true", help="simulate a debug enclave")
    init.add_argument("--json", action="store_true", help="print JSON")
    init.set_defaults(func=_init)

    info = sub.add_parser("info", help="which TEE this guest can attest as, and why")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)
    ev = sub.add_parser("evidence", help="print this guest's evidence for a nonce (debugging; no keys)")
    ev.add_argument("--nonce", required=True, help="the nonce to bind (as a KBS challenge gives it)")
    ev.add_argument("--tee", choices=TEE_CHOICES, default="auto", help="attester (default: detect)")
    ev.add_argument("--hash", choices=HASH_ALGORITHMS, default="sha384", help="report-data hash")
    ev.add_argument(
        "--sim-platform", metavar="DIR", help="sim TEE platform (default: $LAYERSEAL_SIM_PLATFORM)"
    )
    ev.set_defaults(func=_evidence)
