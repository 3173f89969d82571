"""A throwaway PostgreSQL server (the Debian package's binaries), for the storage tests.

opsbot's replicas share one PostgreSQL, so every table is tested on it as well as on SQLite.

``start_postgres`` runs ``initdb`` into a fresh directory and ``postgres`` on it: trust auth,
listening on 127.0.0.1 on a free port and on a unix socket in that directory, ``fsync`` off
(nothing here must survive a crash). PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` system user, in a directory of its own under /tmp (pytest's tmp dirs are
private to root). :meth:`PgServer.stop` ends it and removes the directory.

The fixtures:

- ``postgres_server``: one server for the whole session, started on first use;
- ``postgres_url``: a fresh, empty database on it for one test (``postgresql+psycopg://…``),
  dropped afterwards, even if the test left connections open;
- ``db_url``: parametrized ``sqlite`` / ``postgresql``, the URL of a fresh empty database on
  each backend: fixtures that build a ``Database`` from it run their tests on both.

A missing PostgreSQL skips the ``postgresql`` cases locally and fails them under CI=true, as
``require_program`` does for the other integration programs. Imported by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from commands.db import Database

SUPERUSER = "postgres"
# Empty databases for the tests are copies of this one (CREATE DATABASE ... TEMPLATE).
TEMPLATE = "opsbot_template"
# Fast and unsafe: a crash loses the data, which here is thrown away anyway.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # a test's expected unique violation is not news
    "timezone": "UTC",
}


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("postgres") is not None:
        return Path(on_path).parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    return Path(newest).parent


def require_postgres() -> Path:
    """The PostgreSQL bin directory; a skip locally, a failure in CI (CI=true)."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb, postgres) is not installed; .ci/run must install it")
        pytest.skip("PostgreSQL (initdb, postgres) is not installed")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running PostgreSQL server; ``url()`` names a database on it."""

    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    owned_directory: bool = True
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres", *, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL for ``database`` over TCP, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5433/x``."""
        return f"postgresql+{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname=database,
                             autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]  # test-controlled SQL
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a copy of the empty template); its name."""
        name = name or f"test_{os.getpid()}_{next(self._numbers)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back and disconnect every session), then remove the cluster."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The cluster goes; a directory the caller gave keeps the log.
        shutil.rmtree(self.directory if self.owned_directory else self.directory / "data", ignore_errors=True)


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run the child as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        pytest.fail("running as root needs a 'postgres' system user to run PostgreSQL as")
    home = user.pw_dir if os.path.isdir(user.pw_dir) else "/tmp"
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"}}


def start_postgres(directory: Path | None = None, *, timeout: float = 60.0) -> PgServer:
    """Initialise and start a PostgreSQL server; call ``stop()`` on the result when done.

    ``directory`` (created if missing) holds the cluster, its socket and its log. As root, or
    without ``directory``, it is a fresh directory under the system tmp dir instead, owned by
    the ``postgres`` user (who could not reach into pytest's root-only tmp dirs).
    """
    bindir = require_postgres()
    as_user = _as_postgres_user()
    owned = directory is None or bool(as_user)
    if owned:
        directory = Path(tempfile.mkdtemp(prefix="opsbot-pg-"))
        if as_user:
            os.chown(directory, as_user["user"], as_user["group"])
    else:
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
         "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        capture_output=True, cwd=directory, **as_user,
    )
    if init.returncode != 0:
        out = (init.stdout + init.stderr).decode(errors="replace")
        raise RuntimeError(f"initdb failed ({init.returncode}): {out[-3000:]}")

    port = _free_port()
    options: list[str] = ["-p", str(port), "-k", str(directory)]
    for key, value in SETTINGS.items():
        options += ["-c", f"{key}={value}"]
    log_path = directory / "postgres.log"
    with open(log_path, "wb") as log:
        if as_user:
            os.chown(log_path, as_user["user"], as_user["group"])
        process = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), *options],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=directory,
                                   start_new_session=True, **as_user)
    server = PgServer("127.0.0.1", port, directory, process, owned_directory=owned)
    try:
        _wait_ready(server, timeout)
        server.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0 ENCODING 'UTF8'")
        server.execute(f"ALTER DATABASE {TEMPLATE} IS_TEMPLATE true")
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: PgServer, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited ({server.process.returncode}): {server.log()}")
        try:
            server.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {timeout}s: {server.log()}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, started by the first test that needs it."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        with contextlib.suppress(Exception):  # the server may have been stopped by the test
            postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'opsbot.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A fresh database with every opsbot table, on each backend (``db_url``)."""
    import bot.app  # noqa: F401 - imports every module that defines a table

    database = Database(db_url)
    database.create_all()
    yield database
    database.dispose()

