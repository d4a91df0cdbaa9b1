"""A private PostgreSQL server for the tests, from Debian's `postgresql` binaries.

`private_postgres()` runs `initdb` and `pg_ctl` from `/usr/lib/postgresql/<version>/bin` (the
newest version installed; `$CT_POSTGRES_BIN` names another bin directory) in a fresh temporary
directory, and serves one database on 127.0.0.1, on a free port, with a random password
(checked with `md5`, see `_initialise`); its unix socket is in that directory too, so it never
meets a system server. Postgres refuses to run as root: as root the server runs as the
`postgres` system user the Debian package creates (`runuser -u postgres --`, the directory
owned by it), otherwise as the current user.

It stops by itself: `pg_ctl stop` when the `with` block ends; and a watchdog process stops it
and removes the directory when the process that started it dies without getting there (the
watchdog reads a pipe only that process holds, so it sees end-of-file at its death, even by
SIGKILL), or after `lifetime` seconds whatever happens. Missing binaries are an error that
says how to install them, never a skip. `sqlite_files(home)` lists the SQLite database files
under a Dagster home: none, for an instance on Postgres.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ct_assets_tests.live import free_port

DEBIAN_ROOT = Path("/usr/lib/postgresql")
BIN_ENV = "CT_POSTGRES_BIN"
SERVER_USER = "postgres"  # the system user of Debian's postgresql package
LIFETIME = 1800  # seconds: the watchdog stops the server after this, whatever happens
NEEDED = ("initdb", "pg_ctl", "postgres", "createdb")
# The watchdog: `cat` ends when its stdin, a pipe whose only writer is the process that started
# the server, is closed (that process ended, however) or when `timeout` kills it; then the
# server is stopped and its directory removed. Positional: lifetime, directory, stop command.
WATCHDOG = ('lifetime=$1 dir=$2; shift 2; timeout "$lifetime" cat >/dev/null; '
            '"$@" >/dev/null 2>&1; rm -rf "$dir"')
SQLITE_HEADER = b"SQLite format 3\x00"
# A throwaway server: no durability needed, and enough connections for the daemon, its run
# workers, the webserver and the test's own instance.
SETTINGS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200")


@dataclass(frozen=True)
class PostgresServer:
    """A running private server: where it listens and who may connect."""

    host: str
    port: int
    user: str
    password: str
    database: str
    directory: Path  # data dir, log and unix socket; removed when the server stops
    version: str

    def dagster_env(self) -> dict[str, str]:
        """The variables `ct_assets/templates/dagster-postgres.yaml` reads."""
        return {"DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_DB": self.database}

    def connect(self):  # -> psycopg2 connection; psycopg2 comes with dagster-postgres
        """A psycopg2 connection to the server's database."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=self.database)

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError as error:
            return f"(no server log: {error})"


def postgres_bin(root: Path = DEBIAN_ROOT) -> Path:
    """The bin directory of the newest PostgreSQL under `root` (or `$CT_POSTGRES_BIN`).

    Raises:
        RuntimeError: no directory holds `initdb`, `pg_ctl`, `postgres` and `createdb`.
    """
    if os.environ.get(BIN_ENV):
        candidates = [Path(os.environ[BIN_ENV])]
    else:
        candidates = sorted(root.glob("*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in NEEDED):
            return directory
    where = f"${BIN_ENV}={os.environ[BIN_ENV]}" if os.environ.get(BIN_ENV) else f"{root}/*/bin"
    raise RuntimeError(
        f"no PostgreSQL server binaries ({', '.join(NEEDED)}) in {where}: `make test` installs "
        "Debian's postgresql (apt-get install postgresql), or point $CT_POSTGRES_BIN at a "
        "bin directory that has them")


def _version_key(directory: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name)) or (0,)


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the server's user: `runuser` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError as missing:
        raise RuntimeError(
            f"running as root, and there is no `{SERVER_USER}` user to run PostgreSQL as "
            "(Postgres refuses root; Debian's postgresql package creates that user)") from missing
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root, and `runuser` (util-linux) is not on the PATH: it "
                           f"is needed to run PostgreSQL as `{SERVER_USER}`")
    return [runuser, "-u", SERVER_USER, "--"]


def _run(command: Sequence[str], what: str, cwd: Path, server: PostgresServer | None = None,
         env: dict[str, str] | None = None, timeout: float = 120) -> None:
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        log = f"\n--- server log ---\n{server.log_tail()}" if server else ""
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
                           f"{result.stdout}{result.stderr}{log}")


@contextmanager
def private_postgres(database: str = "dagster", lifetime: float = LIFETIME
                     ) -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on 127.0.0.1, serving `database`; stopped on exit."""
    bin_dir = postgres_bin()
    as_server = _as_server_user()
    directory = Path(tempfile.mkdtemp(prefix="ct-postgres-"))
    if as_server:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(directory, account.pw_uid, account.pw_gid)
    data = directory / "data"
    stop = [*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    read_end, write_end = os.pipe()  # both close-on-exec: only the watchdog gets its end
    watchdog = subprocess.Popen(
        ["sh", "-c", WATCHDOG, "ct-postgres-watchdog", str(int(lifetime)), str(directory),
         *stop], stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # a Ctrl-C to the tests' group must not skip the cleanup
    os.close(read_end)
    try:
        yield _initialise(bin_dir, as_server, directory, database)
    finally:
        try:
            if (data / "postmaster.pid").exists():  # started, even if a later step failed
                _run(stop, "pg_ctl stop", directory, timeout=90)
        finally:
            try:
                os.killpg(watchdog.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            watchdog.wait()
            os.close(write_end)
            shutil.rmtree(directory, ignore_errors=True)


def _initialise(bin_dir: Path, as_server: list[str], directory: Path, database: str
                ) -> PostgresServer:
    """`initdb` in `directory`, `pg_ctl start` on a free port (three tries), then `createdb`.

    The password is checked with `md5`, not Postgres's default SCRAM: dagster-postgres opens a
    connection for each storage call (no pool outside the webserver; about 12,500 in one
    end-to-end test), and SCRAM's key derivation costs about 5 ms of CPU per connection on
    each side (12.8 ms per connection against 7.0 ms with md5, measured on the 2-core machine).
    The password is still required: a wrong one is refused.
    """
    password = secrets.token_hex(16)
    password_file = directory / "password"
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    if as_server:
        stat = directory.stat()
        os.chown(password_file, stat.st_uid, stat.st_gid)
    data = directory / "data"
    version = bin_dir.parent.name
    _run([*as_server, str(bin_dir / "initdb"), "-D", str(data), "-U", "ct",
          f"--pwfile={password_file}", "--auth=md5", "-E", "UTF8", "--locale=C",
          "--no-sync", "--no-instructions"], "initdb", directory)
    password_file.unlink()
    for attempt in range(3):
        port = free_port()  # another process may take it before the server binds: retried
        server = PostgresServer(host="127.0.0.1", port=port, user="ct", password=password,
                                database=database, directory=directory, version=version)
        options = " ".join(["-h", "127.0.0.1", "-p", str(port), "-k", str(directory),
                            *SETTINGS])
        try:
            _run([*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(server.log),
                  "-o", options, "-w", "-t", "60", "start"], "pg_ctl start", directory, server)
            break
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(1)
    env = {**os.environ, "PGPASSWORD": password}
    _run([str(bin_dir / "createdb"), "-h", server.host, "-p", str(port), "-U", "ct", database],
         "createdb", directory, server, env=env)
    # initdb stored the password as SCRAM (which `md5` lines then ask for); store its md5 form.
    connection = server.connect()
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("ALTER ROLE ct PASSWORD %s",
                           ("md5" + hashlib.md5(f"{password}ct".encode()).hexdigest(),))
    finally:
        connection.close()
    return server


def sqlite_files(home: Path) -> list[Path]:
    """Every SQLite database file under `home` (a Dagster home on Postgres should have none)."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                if file.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                    found.append(path)
    return found
