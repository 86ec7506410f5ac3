"""Shared fixtures: a gateway in a temporary folder, on SQLite or on the real PostgreSQL.

PostgreSQL comes from $GATEWAY_TEST_POSTGRES_URL (default: the project machine's server
at 127.0.0.1:5432, database test).  Each test gets a schema of its own.  When CI is set
and the server cannot be reached, the tests fail; elsewhere they skip saying why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every `gateway serve` a test starts opens its HTTP server ([http], on by default at
# 127.0.0.1:8025) on a free port of its own: several serve at once (tests of several
# checkouts on one machine) would find 8025 taken and stop.  Tests of the HTTP server
# set the port in their config and leave this out of the service's environment.
os.environ.setdefault("GATEWAY_HTTP_PORT", "0")


def find_corpus() -> Path | None:
    """The shared mail corpus: $GATEWAY_CORPUS, else ``shared/corpus`` in a folder above the
    checkout (a worktree may sit one level deeper than the main checkout)."""
    if os.environ.get("GATEWAY_CORPUS"):
        return Path(os.environ["GATEWAY_CORPUS"])
    for parent in ROOT.parents:
        candidate = parent / "shared" / "corpus"
        if candidate.is_dir():
            return candidate
    return None


CORPUS = find_corpus() or ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus folder; under CI a missing corpus fails, elsewhere the test skips saying why."""
    path = find_corpus()
    if path is None or not path.is_dir():
        problem = f"mail corpus not found (looked for shared/corpus above {ROOT}; set GATEWAY_CORPUS)"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return path
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {POSTGRES_URL} cannot be reached: {exc}"


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = _postgres_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set: PostgreSQL tests must run)")
        pytest.skip(problem)


@pytest.fixture
def postgres_url(postgres_available, request) -> str:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    yield url
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"drop schema {schema} cascade")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """Run a test on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'gateway.db'}"
    return request.getfixturevalue("postgres_url")


def write_config(folder: Path, text: str = "", **sections) -> Path:
    """A config file in ``folder`` (data under folder/var), plus extra TOML text."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def gw(tmp_path, database_url):
    """A gateway (App) in a temporary folder on the parametrised database."""
    from gateway.app import App
    from gateway.config import load_config

    cfg_text = f'[database]\nurl = "{database_url}"\n'
    path = write_config(tmp_path, cfg_text)
    app = App(load_config(path, env={}))
    yield app
    app.engine.dispose()


@pytest.fixture
def sqlite_gw(tmp_path):
    from gateway.app import App
    from gateway.config import load_config

    path = write_config(tmp_path, "")
    app = App(load_config(path, env={}))
    yield app
    app.engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"service exited with {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def run_gateway(*args: str, cwd: Path, env: dict | None = None, input: bytes | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run the real command line, as an operator would."""
    full_env = dict(os.environ)
    full_env.pop("GATEWAY_CONFIG", None)
    # This checkout's code, whatever is installed.
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=full_env, input=input,
                          capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"gateway {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return proc
