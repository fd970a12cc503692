"""Command line: `jarvis-memory serve` (the default), `token`, `backup`, `restore`, and more.

The others: `reindex`, `export` and `import`; and the data commands of a running daemon
(`get`, `put`, `list`, `search`, `delete`, `watch`, `stats`, `health`), which are SDK clients
defined in jarvis_memory.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, NoReturn

import grpc

from jarvis_memory import cli as data_cli
from jarvis_memory_server import __version__
from jarvis_memory_server.config import DEFAULT_ADDR, DEFAULT_DB, add_serve_arguments, from_args
from jarvis_memory_server.errors import JarvisError, StartupError
from jarvis_memory_server.store.backend import is_postgres


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line on stderr (and exits with status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(
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
    backup = commands.add_parser(
        "backup", help="copy the running daemon's database, consistently, while it serves"
    )
    backup.add_argument("--out", required=True, help="file to write (replaced atomically)")
    backup.add_argument("--addr", default=os.environ.get("JARVIS_MEMORY_ADDR", DEFAULT_ADDR),
                        help="the daemon (env JARVIS_MEMORY_ADDR; default %(default)s)")
    backup.add_argument("--token", default=os.environ.get("JARVIS_MEMORY_TOKEN"),
                        help="an admin credential for '*' (env JARVIS_MEMORY_TOKEN)")
    backup.add_argument("--ca-file", help="CA to trust when the daemon serves TLS")
    restore = commands.add_parser(
        "restore", help="replace the database file with a backup (the daemon must be stopped)"
    )
    restore.add_argument("backup_file", help="a file written by 'jarvis-memory backup'")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing database file")
    reindex = commands.add_parser(
        "reindex",
        help="rebuild the full-text and vector indexes from the tables (the daemon must be "
        "stopped)",
    )
    export = commands.add_parser(
        "export", help="write the user data as JSON Lines to stdout (the daemon may be running)"
    )
    export.add_argument("--namespace", help="export this namespace only (default: all)")
    commands.add_parser(
        "import", help="add the rows of an export read from stdin (the daemon must be stopped)"
    )
    data_cli.add_commands(commands)
    for sub in (create, token_commands.choices["list"], revoke, restore, reindex, export,
                commands.choices["import"]):
        sub.add_argument(
            "--db", dest="db_path", default=os.environ.get("JARVIS_MEMORY_DB", DEFAULT_DB),
            help="the daemon's database: an SQLite file or a postgresql:// URL (env "
            "JARVIS_MEMORY_DB; default %(default)s)",
        )
    return parser


def token_command(args: argparse.Namespace) -> None:
    """Run `jarvis-memory token ...` on the database (daemons may be running on it)."""
    from jarvis_memory_server.service.auth import Authenticator
    from jarvis_memory_server.store.backend import make_database

    db = make_database(args.db_path)
    db.open()
    try:
        auth = Authenticator(db)
        if args.token_command == "create":
            # Any token row, revoked ones included, turns auth on (Authenticator._refresh).
            first = not auth.list_tokens()
            print(auth.create_token(args.role, args.namespaces, args.label))
            if first:
                _warn_auth_on(args.db_path)
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


def _warn_auth_on(db_path: str) -> None:
    """Say on stderr that the first API token turned auth on for the database."""
    where = db_path
    if is_postgres(db_path):
        from jarvis_memory_server.store.postgres import redact

        where = redact(db_path)
    print(
        f"jarvis-memory token create: warning: auth is now ON for {where}: this is its first "
        "API token.\nA daemon serving this database without a JWT secret or --require-auth "
        "accepted every call until now; within --auth-cache-ttl it refuses calls without a "
        "credential. Every client now needs a token (--token or JARVIS_MEMORY_TOKEN, or "
        "Client(token=...)).",
        file=sys.stderr,
    )


def backup_command(args: argparse.Namespace) -> None:
    """Stream a backup from the daemon into --out, checking its size and SHA-256.

    The bytes go to a file with no name in --out's folder (O_TMPFILE), named --out only once
    complete and checked, so that no failure, not even a kill -9, leaves a partial file. Where
    the file system cannot do that, they go to OUT.partial, removed on any failure but a kill.
    """
    import hashlib

    from jarvis.memory.v1 import admin_pb2, admin_pb2_grpc

    out = pathlib.Path(args.out)
    if args.ca_file:
        channel = grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(
            pathlib.Path(args.ca_file).read_bytes()))
    else:
        channel = grpc.insecure_channel(args.addr)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    digest, size, revision, expected = hashlib.sha256(), 0, 0, ""
    with channel, _unnamed_file(out) as (file, publish):
        for chunk in admin_pb2_grpc.AdminServiceStub(channel).Backup(
            admin_pb2.BackupRequest(), metadata=metadata
        ):
            if chunk.offset != size:
                raise StartupError(f"backup stream out of order at byte {size}")
            file.write(chunk.data)
            digest.update(chunk.data)
            size += len(chunk.data)
            revision, expected = chunk.revision, chunk.sha256 or expected
        if digest.hexdigest() != expected:
            raise StartupError("the backup's SHA-256 does not match the daemon's; nothing written")
        publish()
    print(f"wrote {out} ({size} bytes, revision {revision}, sha256 {expected})")


@contextlib.contextmanager
def _unnamed_file(out: pathlib.Path) -> Iterator[tuple[BinaryIO, Callable[[], None]]]:
    """Yield a file to write and a function that fsyncs it and names it ``out`` atomically.

    Unless that function ran, nothing is left behind when the block ends.
    """
    folder = out.parent
    partial: pathlib.Path | None = None
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o644)
    except (AttributeError, OSError):  # no O_TMPFILE here: a named file, removed on failure
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
    published = False

    def publish() -> None:
        nonlocal published
        file.flush()
        os.fsync(file.fileno())
        if partial is not None:
            partial.replace(out)
        else:
            # Give the unnamed file a fresh name, then rename it over --out.
            staged = out.with_name(f".{out.name}.{os.getpid()}.{time.monotonic_ns()}")
            _link_unnamed(file, staged)
            try:
                staged.replace(out)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
        published = True

    with os.fdopen(fd, "w+b") as file:
        try:
            yield file, publish
        finally:
            if not published and partial is not None:
                partial.unlink(missing_ok=True)


def _link_unnamed(file: BinaryIO, target: pathlib.Path) -> None:
    """Name a file opened with O_TMPFILE (by copying it where linking it is not allowed)."""
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # With a dir_fd, os.link calls linkat(), which follows the /proc symlink to the file.
        os.link(f"/proc/self/fd/{file.fileno()}", target.name, dst_dir_fd=folder,
                follow_symlinks=True)
        return
    except OSError:
        pass
    finally:
        os.close(folder)
    file.seek(0)
    try:
        with target.open("wb") as copy:
            shutil.copyfileobj(file, copy, 1024 * 1024)
            copy.flush()
            os.fsync(copy.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def restore_command(args: argparse.Namespace) -> None:
    """Check a backup file and put it in place of the (stopped) daemon's database."""
    import shutil

    import apsw

    from jarvis_memory_server.store.migrations import LATEST_VERSION
    from jarvis_memory_server.store.sqlite import exclusive_use, load_extensions

    source, target = pathlib.Path(args.backup_file), pathlib.Path(args.db_path)
    try:
        conn = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
        load_extensions(conn)  # the integrity check reads the full-text indexes too
        check = conn.execute("PRAGMA integrity_check").fetchone()
        version = conn.execute("PRAGMA user_version").fetchone()
        conn.close()
    except apsw.Error as exc:
        raise StartupError(f"{source} is not a usable SQLite database: {exc}") from exc
    if not check or check[0] != "ok":
        raise StartupError(f"{source} fails its integrity check: {check}")
    if not version or not 1 <= version[0] <= LATEST_VERSION:
        raise StartupError(f"{source} is not a jarvis-memory backup this version can restore")
    with exclusive_use(target):  # refuses while a daemon runs on the file
        if target.exists() and not args.force:
            raise StartupError(f"{target} exists; pass --force to replace it")
        staged = target.with_name(target.name + ".restoring")
        shutil.copyfile(source, staged)
        with staged.open("rb") as file:
            os.fsync(file.fileno())
        for stale in (f"{target}-wal", f"{target}-shm"):
            pathlib.Path(stale).unlink(missing_ok=True)
        staged.replace(target)
    print(f"restored {target} from {source} (schema version {version[0]})")


def reindex_command(args: argparse.Namespace) -> None:
    """Rebuild every search index from its table, in one transaction, with the daemon stopped."""
    import time

    from jarvis_memory_server.store.search import SearchStore
    from jarvis_memory_server.store.sqlite import Database, exclusive_use

    target = pathlib.Path(args.db_path)
    if not target.exists():
        raise StartupError(f"{target} does not exist")
    with exclusive_use(target):  # refuses while a daemon runs on the file
        db = Database(target)
        db.open()  # applies migrations first
        try:
            started = time.perf_counter()
            with db.conn:  # one transaction: all indexes rebuilt and checked, or none
                counts = SearchStore.rebuild(db.conn)
                SearchStore.check(db.conn)
        finally:
            db.close()
    for index, rows in counts.items():
        print(f"{index}: {rows} rows indexed")
    print(f"reindexed {target} in {time.perf_counter() - started:.1f} s")


def export_command(args: argparse.Namespace) -> None:
    """Write every row of user data as JSON Lines to stdout, from one consistent snapshot."""
    import apsw

    from jarvis_memory_server.store.backend import is_postgres
    from jarvis_memory_server.store.export import write_export
    from jarvis_memory_server.store.sqlite import load_extensions

    if is_postgres(args.db_path):
        from jarvis_memory_server.errors import Unavailable
        from jarvis_memory_server.store.postgres import PgConnection, redact

        pg = PgConnection(args.db_path, name="export")
        try:
            rows = write_export(pg, sys.stdout, args.namespace)
        except Unavailable as exc:
            raise StartupError(exc.message) from exc
        finally:
            pg.close()
        sys.stdout.flush()
        print(f"exported {rows} rows from {redact(args.db_path)}", file=sys.stderr)
        return
    source = pathlib.Path(args.db_path)
    if not source.exists():
        raise StartupError(f"{source} does not exist")
    try:
        conn = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            load_extensions(conn)
            conn.setbusytimeout(5000)
            conn.execute("PRAGMA query_only = 1")
            rows = write_export(conn, sys.stdout, args.namespace)
        finally:
            conn.close()
    except apsw.Error as exc:
        raise StartupError(f"cannot read {source}: {exc}") from exc
    sys.stdout.flush()
    print(f"exported {rows} rows from {source}", file=sys.stderr)


def import_command(args: argparse.Namespace) -> None:
    """Add the rows of an export (stdin) to a database, in one transaction.

    An SQLite file's daemon must be stopped; on PostgreSQL the import takes the daemons' write
    lock, so they may keep serving (their writes wait for it).
    """
    import contextlib

    import apsw

    from jarvis_memory_server.errors import JarvisError
    from jarvis_memory_server.store.backend import is_postgres, make_database, search_store
    from jarvis_memory_server.store.export import ImportDataError, Importer, parse_lines
    from jarvis_memory_server.store.migrations import LATEST_VERSION
    from jarvis_memory_server.store.postgres import redact
    from jarvis_memory_server.store.sqlite import exclusive_use

    postgres = is_postgres(args.db_path)
    target = redact(args.db_path) if postgres else args.db_path
    try:
        header, rows = parse_lines(sys.stdin, LATEST_VERSION)
    except ImportDataError as exc:
        raise StartupError(f"nothing imported: {exc}") from exc
    # Refuses while a daemon runs on an SQLite file.
    with contextlib.nullcontext() if postgres else exclusive_use(pathlib.Path(args.db_path)):
        db = make_database(args.db_path)
        db.open()  # creates the schema if needed and applies migrations first
        try:
            importer = Importer(db.conn, search_store(db))
            cursor = importer.cursor
            db.begin(cursor)  # one transaction, under the write lock: every row or none
            try:
                importer.run(header, rows)
                cursor.execute("COMMIT")
            finally:
                if not db.conn.getautocommit():
                    cursor.execute("ROLLBACK")
                if not postgres:  # ends its statements, so the WAL can be checkpointed
                    cursor.close()  # type: ignore[attr-defined]
        except ImportDataError as exc:
            raise StartupError(f"nothing imported: {exc}") from exc
        except (apsw.Error, JarvisError) as exc:
            raise StartupError(f"nothing imported: {exc}") from exc
        finally:
            db.close()
    added = sum(importer.inserted.values())
    present = sum(importer.skipped.values())
    details = ", ".join(f"{kind} {n}" for kind, n in sorted(importer.inserted.items()))
    print(f"imported {added} rows into {target} ({details or 'none new'}); "
          f"{present} already present")


def _utc(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jarvis-memory` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help",
                                                                            "--version")):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    if args.command in data_cli.COMMANDS:
        sys.exit(data_cli.run(args))
    commands = {"token": token_command, "backup": backup_command, "restore": restore_command,
                "reindex": reindex_command, "export": export_command, "import": import_command}
    if args.command in commands:
        try:
            if args.command in ("restore", "reindex") and is_postgres(args.db_path):
                raise StartupError(
                    f"{args.command} works on an SQLite file; a PostgreSQL database is restored "
                    "with PostgreSQL's tools (pg_restore) and keeps its indexes itself")
            commands[args.command](args)
        except (JarvisError, StartupError, OSError) as exc:
            print(f"jarvis-memory {args.command}: {exc}", file=sys.stderr)
            sys.exit(2)
        except grpc.RpcError as exc:  # the daemon refused or could not be reached
            print(f"jarvis-memory {args.command}: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)
            sys.exit(1)
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
