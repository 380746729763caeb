"""The ``layerseal`` command: argument parsing and error printing only.

Subcommands live in sibling modules; each defines ``register(subparsers)`` which adds
its parsers and sets ``func`` to a callable taking the parsed namespace and returning
an exit status.  Modules are discovered, so adding a command never needs this file.

Start-up time matters (per-layer keyprovider calls, ``--version`` in scripts), so a run
imports only the module of the command it runs: ``--version`` imports nothing beyond
this module, ``--help`` lists the known commands from :data:`_COMMANDS` without
importing them (a test keeps that table equal to what the modules register), and a
module missing from the table is still found by discovery, at the cost of importing it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import layerseal

# typing.TYPE_CHECKING without importing typing (2 ms of --version); type checkers know the name
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

# command -> (module defining it, its one-line help as the module registers it)
_COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("broker", "the key broker (security service)"),
    "completion": (
        "completion",
        "print a shell completion script: layerseal completion bash > /etc/bash_completion.d/layerseal",
    ),
    "containerd": ("containerd", "containerd stream processor: decrypt layers as containerd unpacks"),
    "copy": ("copy", "copy an image, encrypting or decrypting layers"),
    "inspect": ("copy", "show an image's layers and how they are encrypted"),
    "keyprovider": (
        "keyprovider",
        "ocicrypt keyprovider: skopeo/podman/buildah/CRI-O/containerd wrap and unwrap "
        "layer keys via the broker",
    ),
    "keys": ("keys", "rotate, revoke and list layer keys at the broker"),
    "layer": ("layer", "change the layers of an image"),
    "pull": ("engine", "pull, decrypt, verify and unpack an image inside the enclave"),
    "run": ("engine", "pull an image and run it with runc (or crun, or bwrap)"),
    "store": ("store", "inspect or clean the shared encrypted blob store and the snapshot cache"),
    "tee": ("tee", "TEE detection and evidence; the simulated TEE platform"),
}
# kept for callers that only need the module of a command
_COMMAND_MODULES = {name: module for name, (module, _) in _COMMANDS.items()}


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def _asks_version(argv: Sequence[str]) -> bool:
    """``--version`` given before any command (where argparse would act on it)."""
    for arg in argv:
        if arg == "--version":
            return True
        if not arg.startswith("-"):
            return False
    return False


def _discovered_modules() -> list[str]:
    """The command modules in this package: its directory listed as ``pkgutil.iter_modules``
    would (which imports ``inspect``, 5 ms of ``--help``)."""
    import os
    from importlib.machinery import all_suffixes

    import layerseal.cli

    suffixes = sorted(all_suffixes(), key=len, reverse=True)
    names: set[str] = set()
    for directory in layerseal.cli.__path__:
        for entry in os.scandir(directory):
            if entry.is_dir():
                name = entry.name if os.path.isfile(os.path.join(entry.path, "__init__.py")) else ""
            else:
                name = next((entry.name[: -len(s)] for s in suffixes if entry.name.endswith(s)), "")
            if name.isidentifier():
                names.add(name)
    return sorted(n for n in names if n not in ("main", "common") and not n.startswith("_"))


def _register(sub: Any, module_name: str) -> None:
    import importlib

    module = importlib.import_module(f"layerseal.cli.{module_name}")
    register = getattr(module, "register", None)
    if register is not None:
        register(sub)


def _placeholder(args: argparse.Namespace) -> int:  # pragma: no cover - never chosen: see build_parser
    raise AssertionError(f"command {args.command!r} was parsed without its module")


def build_parser(argv: Sequence[str] | None = None, *, lazy: bool = True) -> argparse.ArgumentParser:
    """The parser for *argv*; with *lazy*, only the module of *argv*'s command is imported
    and the other known commands are listed by name and help alone."""
    import argparse

    from layerseal.cli._environment import epilog as environment_epilog

    parser = argparse.ArgumentParser(
        prog="layerseal",
        description="Keep container images confidential until they run in an attested enclave.",
        epilog=environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"layerseal {layerseal.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command = _command_of(argv) if argv is not None else None
    known = {module for module, _ in _COMMANDS.values()}
    if not lazy or argv is None:
        wanted = _discovered_modules()
    elif command in _COMMANDS:
        wanted = [_COMMANDS[command][0]]
    else:
        # no command (help) or one this table does not know: modules it does not list are
        # imported, so that a newly added module's commands still appear and work
        wanted = [m for m in _discovered_modules() if m not in known]
    for module_name in wanted:
        _register(sub, module_name)
    # argparse lists sub-commands in the order added; keep them sorted as before
    for name in sorted(_COMMANDS):
        if name not in sub.choices:
            sub.add_parser(name, help=_COMMANDS[name][1], add_help=False).set_defaults(func=_placeholder)
    return parser


def _print_traceback() -> None:
    import traceback  # only with --verbose: it pulls in linecache and tokenize

    traceback.print_exc()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _asks_version(argv):
        print(f"layerseal {layerseal.__version__}")
        return 0
    from layerseal.cli._exits import broken_pipe, describe_os_error, exit_code_of, os_error_status
    from layerseal.errors import LayersealError

    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    # commands shaped like "SRC PATH... [options] DST" collect positionals given after options
    collect = getattr(args, "collect_positionals", None)
    if extras and collect is not None and not any(e.startswith("-") for e in extras):
        getattr(args, collect).extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    # only a command that runs moves data: --help and usage errors skip loading ctypes (2-3 ms);
    # commands registered with tune_allocator_first=False tune it once their image opened (so
    # a missing one fails without it: cli.common.tune_allocator_now) or move no bulk data
    if getattr(args, "tune_allocator_first", True):
        from layerseal.cli._allocator import tune_allocator

        tune_allocator()
    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away is noticed here, not at interpreter exit
    except BrokenPipeError:
        return broken_pipe()
    except LayersealError as exc:
        if args.verbose:
            _print_traceback()
        print(f"layerseal: error: {exc}", file=sys.stderr)
        # commands whose own status is another program's (run) fail with codes that cannot collide
        own_failure = getattr(args, "failure_status", None)
        if own_failure is not None:
            return int(getattr(exc, "container_status", own_failure))
        return exit_code_of(exc)
    except OSError as exc:
        # the local system refused (no space, a file missing or unreadable): one line, not a traceback
        if args.verbose:
            _print_traceback()
        print(f"layerseal: error: {describe_os_error(exc)}", file=sys.stderr)
        return int(getattr(args, "failure_status", None) or os_error_status(exc))
    except KeyboardInterrupt:
        print("layerseal: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
