"""`kvs-ingest` entry point: one subcommand per job (DESIGN.md §4.1).

Each subcommand lives beside the code it drives, in a module that offers
`add_arguments(parser)` and `run(args) -> int` (sync; it runs its own event loop if it needs one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kvs_ingest.config import SettingsError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kvs_ingest.server.cli", "run the ingest service"),
    "emulator": ("kvs_ingest.emulator.cli", "run the local KVS emulator alone"),
    "speak": ("kvs_ingest.client.speak", "stream an audio file to the service like a browser"),
    "fetch": ("kvs_ingest.kvs.fetch", "read a session's audio back from KVS into a WAV file"),
    "token": ("kvs_ingest.server.auth", "print a speaker token signed with AUTH_SECRET"),
    "decode": ("kvs_ingest.media.cli", "decode recorded chunks the way the service does"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvs-ingest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SettingsError as exc:
        print(f"kvs-ingest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
