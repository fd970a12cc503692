"""Command line: `jarvis-memory serve` (the default), and later admin commands."""

from __future__ import annotations

import argparse
import logging
import sys

from jarvis_memory_server import __version__
from jarvis_memory_server.config import add_serve_arguments, from_args
from jarvis_memory_server.errors import StartupError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jarvis-memory", description="gRPC memory daemon for AI assistants"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the daemon (the default command)")
    add_serve_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jarvis-memory` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help",
                                                                            "--version")):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    if args.command == "serve":
        from jarvis_memory_server.daemon import serve

        config = from_args(args)
        logging.basicConfig(
            level=config.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            serve(config)
        except StartupError as exc:
            logging.getLogger("jarvis_memory").error("cannot start: %s", exc)
            sys.exit(2)
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            sys.exit(130)
