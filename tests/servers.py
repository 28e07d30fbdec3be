"""Throwaway servers for tests: a PostgreSQL cluster on loopback and an MLflow tracking server on it.

Plain context managers; the pytest fixtures that use them live in `tests/test_postgres.py`.

    with postgres_cluster() as pg:             # a fresh cluster, stopped and deleted at exit
        url = pg.create_database("optuna")     # postgresql+psycopg2://postgres@127.0.0.1:PORT/optuna
        with mlflow_server(pg.create_database("mlflow")) as tracking_uri:   # http://127.0.0.1:PORT
            ...

Optuna and MLflow each need a database of their own: both keep an `alembic_version` table.
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "postgres"  # the cluster's superuser and, as root, the OS user that runs the server
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server that takes it may still lose a race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing(message: str):
    """Fail under CI (it installs PostgreSQL, so a missing one is a broken set-up), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_driver():
    """PostgreSQL's Python driver, which the URLs name: the `postgres` extra (also in `test`)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _missing("psycopg2 is not installed: pip install -e '.[postgres]'")


def postgres_bindir() -> Path | None:
    """The folder with the server binaries (initdb, pg_ctl): pg_config's, the newest Debian one, or PATH."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    # pg_config may come with libpq-dev alone (client only): look for the server where Debian puts it.
    debian = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates += sorted(debian, key=lambda p: _version_key(p.parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "pg_isready")):
            return folder
    return None


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


@dataclass
class PostgresCluster:
    """A running throwaway cluster: superuser `postgres`, trust auth, 127.0.0.1:`port` only."""

    bindir: Path
    root: Path  # data/ and the unix socket are in here
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database (also what Optuna's --storage and MLflow take)."""
        return f"postgresql+psycopg2://{PG_USER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its URL."""
        done = subprocess.run([str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", PG_USER,
                               name], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {done.stderr.strip()}")
        return self.url(name)


def _as_postgres(command: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a server command as the unprivileged user: PostgreSQL refuses to run as root."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", PG_USER, "--", *command]
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def _check(done: subprocess.CompletedProcess, what: str, log: Path | None = None):
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


@contextlib.contextmanager
def postgres_cluster(timeout: float = 60):
    """Start a fresh PostgreSQL cluster on 127.0.0.1 (a free port); yield a PostgresCluster.

    As root it runs as the OS user `postgres`, in a temp dir chowned to it. Durability is off
    (fsync, synchronous_commit, full_page_writes): the cluster lives for one test session. At exit,
    also when the test fails, the server is stopped (`pg_ctl stop -m fast`) and the dir removed.
    """
    bindir = postgres_bindir()
    if bindir is None:
        _missing(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            _missing(f"no OS user {PG_USER!r} to run PostgreSQL as (root may not); {INSTALL_HINT}")
    root = Path(tempfile.mkdtemp(prefix="ablation-pg-"))  # in /tmp: pytest's tmp dirs are root-only (0700)
    data, log = root / "data", root / "server.log"
    try:
        if as_root:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        done = _as_postgres([bindir / "initdb", "-D", data, "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
                             "--locale=C", "--no-sync"], cwd=root, timeout=timeout)
        _check(done, "initdb")
        # Trust, on the private unix socket and 127.0.0.1 only (initdb's default also trusts ::1).
        (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            done = _as_postgres([bindir / "pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", int(timeout),
                                 "-o", options], cwd=root, timeout=timeout + 10)
            if done.returncode == 0:
                break
            if attempt == 2 or "already in use" not in log.read_text(errors="replace"):
                _check(done, "pg_ctl start", log)
        cluster = PostgresCluster(bindir=bindir, root=root, port=port)
        deadline = time.monotonic() + timeout
        while True:  # pg_ctl -w waited for the socket; this checks TCP on 127.0.0.1, as clients connect
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", cluster.host, "-p", str(port), "-U", PG_USER,
                                    "-t", "5"], capture_output=True, text=True)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {port} not ready after {timeout} s: {ready.stdout}"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():  # started, or still starting after pg_ctl gave up waiting
            done = _as_postgres([bindir / "pg_ctl", "stop", "-D", data, "-m", "fast", "-w"], cwd=root, timeout=120)
            if done.returncode != 0:
                _as_postgres([bindir / "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"], cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def mlflow_executable() -> Path:
    """The `mlflow` command of the running interpreter's environment."""
    path = Path(sys.executable).parent / "mlflow"
    return path if path.exists() else Path(shutil.which("mlflow") or path)


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float):
    """Poll GET url/health until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n"
                               + log.read_text(errors="replace")[-5000:])
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server at {url} not healthy after {timeout} s:\n"
                               + log.read_text(errors="replace")[-5000:])
        time.sleep(0.25)


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path | None = None, workers: int = 1, timeout: float = 120):
    """Start `mlflow server` on 127.0.0.1 (a free port) over `backend_store_uri`; yield its http:// URL.

    Artifacts are proxied by the server (clients log to mlflow-artifacts:/) into `artifacts`, a
    temp dir by default (removed at exit; a given dir is kept, with the server's log beside it).
    One worker: MLflow's default of 4 uvicorn workers each import MLflow, which multiplies the
    start-up time on a small machine. The server's process group is terminated at exit.
    """
    own_dir = artifacts is None
    artifacts = Path(tempfile.mkdtemp(prefix="ablation-mlflow-")) if own_dir else Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / f"{artifacts.name}-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(mlflow_executable()), "server", "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", artifacts.resolve().as_uri(), "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers)]
    # MLflow 3.17 also starts a job runner and 7 huey consumer processes by default (GenAI jobs:
    # scorers, trace rollups), which triple the processes competing for a small machine's cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # its workers are in its process group
    try:
        wait_for_health(url, process, log, timeout)
        yield url
    finally:
        _stop_group(process)
        if own_dir:
            log.unlink(missing_ok=True)
            shutil.rmtree(artifacts, ignore_errors=True)


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies not counted: an orphan's may linger)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _stop_group(process: subprocess.Popen, grace: float = 15):
    """SIGTERM the server's process group (the CLI, uvicorn), SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace
        while True:
            process.poll()  # reap the leader
            if not _group_running(process.pid):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
