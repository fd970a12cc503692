"""Command line: `jarvis-memory serve` (the default) and `jarvis-memory token ...`."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys

from jarvis_memory_server import __version__
from jarvis_memory_server.config import DEFAULT_DB, add_serve_arguments, from_args
from jarvis_memory_server.errors import JarvisError, StartupError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jarvis-memory", description="gRPC memory daemon for AI assistants"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the daemon (the default command)")
    add_serve_arguments(serve)

    token = commands.add_parser("token", help="issue, list and revoke API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="issue a token and print it (it is shown only once)"
    )
    create.add_argument("--role", required=True, choices=("reader", "writer", "admin"))
    create.add_argument(
        "--namespace", dest="namespaces", action="append", required=True,
        help="a namespace the token may use; repeat for more, or '*' for all",
    )
    create.add_argument("--label", default="", help="a note to recognise the token by")
    token_commands.add_parser("list", help="list tokens (never their secrets)")
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the id shown by 'token list' (or the whole token)")
    for sub in (create, token_commands.choices["list"], revoke):
        sub.add_argument(
            "--db", dest="db_path", default=os.environ.get("JARVIS_MEMORY_DB", DEFAULT_DB),
            help="the daemon's database file (env JARVIS_MEMORY_DB; default %(default)s)",
        )
    return parser


def token_command(args: argparse.Namespace) -> None:
    """Run `jarvis-memory token ...` on the database file (the daemon may be running)."""
    from jarvis_memory_server.service.auth import Authenticator
    from jarvis_memory_server.store.sqlite import Database

    db = Database(args.db_path)
    db.open()
    try:
        auth = Authenticator(db)
        if args.token_command == "create":
            print(auth.create_token(args.role, args.namespaces, args.label))
        elif args.token_command == "list":
            print(f"{'ID':<14}{'ROLE':<8}{'CREATED (UTC)':<21}{'REVOKED (UTC)':<21}"
                  "NAMESPACES / LABEL")
            for row in auth.list_tokens():
                revoked = _utc(row.revoked_at) if row.revoked_at else "-"
                namespaces = ",".join(json.loads(row.namespaces))
                print(f"{row.token_id:<14}{row.role:<8}{_utc(row.created_at):<21}{revoked:<21}"
                      f"{namespaces} {row.label}".rstrip())
        else:
            auth.revoke_token(args.token_id)
            print(f"revoked {args.token_id}")
    finally:
        db.close()


def _utc(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jarvis-memory` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help",
                                                                            "--version")):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    if args.command == "token":
        try:
            token_command(args)
        except (JarvisError, StartupError) as exc:
            print(f"jarvis-memory token: {exc}", file=sys.stderr)
            sys.exit(2)
        return
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
