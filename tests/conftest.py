"""Shared fixtures: real databases, a real gateway process on a free port, keys and SDK clients.

Over 400 lines on purpose: the one fixture layer every test package shares (databases, gateway, emulators, S3).

Every test that needs the gateway talks HTTP to a ``batchgw serve`` subprocess. The database is
SQLite always, and PostgreSQL too when ``BATCHGW_TEST_DATABASE_URL`` is set; each gateway gets a
fresh database (a new file, or a new PostgreSQL database created for it and dropped after), copied from one
this test process migrated (tests/db/test_migrations.py starts gateways on empty ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from gateway.context import GatewayContext
    from gateway.simulator import SimulatorCluster

loopback = httpx.Client(
    timeout=30,
    limits=httpx.Limits(keepalive_expiry=1.0),
    cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
)
"""The tests' own HTTP client for calls to local servers (gateways, emulators, metrics, S3). One client for the
whole test process: a new one per call (``httpx.get``) builds a TLS context each time, about 50 ms of CPU, and
startup waits poll ten times a second. Connections idle for a second are closed, well before a server's own
keep-alive timeout (5 s in uvicorn) could close one under a request; no cookie is kept from one test to the next."""


LONGEST_FILES = (
    "tests/engine/test_provider_kinds.py",
    "tests/jobs/test_worker.py",
    "tests/engine/test_outages.py",
    "tests/engine/test_routing.py",
    "tests/api/test_fuzz.py",
    "tests/engine/test_bedrock_e2e.py",
    "tests/dashboard/test_browser.py",
    "tests/engine/test_hard_budget.py",
)
"""The test files that take longest (60 to 200 s each on SQLite), longest first."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Spread the tests of ``spread_databases`` modules over the databases, then start the longest test files
    first. Files go to the test processes in the order collected, so a long file collected late ran alone at the
    end of the session, minutes after the others had finished."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        (kept if _runs_here(item) else left_out).append(item)
        wanted = item.get_closest_marker("database")
        if wanted is not None and wanted.args[0] not in DATABASES:
            item.add_marker(pytest.mark.skip(reason=wanted.kwargs["reason"]))
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
    rank = {path: index for index, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def _runs_here(item: pytest.Item) -> bool:
    """False for the database variants a test leaves out.

    A module marked ``spread_databases`` tests what does not depend on the database (a provider's wire format,
    a client's input, a CLI): each of its tests runs once, on the database its name picks, so both databases
    see half of the module instead of all of it twice. A test marked ``database(kind, reason=...)`` runs on that
    database only; where it is not available, the test is skipped with that reason."""
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("database_kind") if callspec else None
    if kind is None or len(DATABASES) < 2:
        return True
    if (wanted := item.get_closest_marker("database")) is not None:
        return kind == wanted.args[0]
    if item.get_closest_marker("spread_databases") is None:
        return True
    assert callspec is not None
    # The test's id without its database: the same in every test process (xdist requires it), unlike a repr.
    parts = callspec.id.split("-")
    parts.remove(kind)
    key = f"{item.nodeid.split('[', 1)[0]}[{'-'.join(parts)}]"
    return kind == DATABASES[zlib.crc32(key.encode()) % len(DATABASES)]


def pytest_configure(config: pytest.Config) -> None:
    """Let the processes the tests start (gateways, workers, CLI commands, the test workers themselves) share
    compiled bytecode, in a folder of the system's temporary directory rather than beside the sources. Where the
    environment asks for no bytecode files, each of those processes compiled the gateway's sources again: about
    0.65 of the 2.5 CPU-seconds it takes a gateway to start, and most test modules start one or more."""
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / f"batchgw-tests-pycache-{os.getuid()}")


PG_URL = os.environ.get("BATCHGW_TEST_DATABASE_URL")
DATABASES = ["sqlite", *(["postgresql"] if PG_URL else [])]


def _listen_ports() -> range:
    """Where this test process's servers listen: below Linux's ephemeral range (32768-60999), from which every
    outgoing connection takes its source port (a port the kernel handed out for ``bind(0)`` can be taken by such
    a connection before the server that was meant to listen on it starts; a port from this range cannot).

    Each pytest-xdist worker has a slice of its own. Two workers choosing the same free port within the second
    before either server binds it would otherwise be a race: the loser's readiness check would be answered by
    the winner's server, and its test would go on against another test's gateway."""
    low, high = 20_000, 32_000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers <= 1:
        return range(low, high)
    size = (high - low) // workers
    start = low + int(worker[2:]) % workers * size
    return range(start, start + size)


_LISTEN_PORTS = _listen_ports()

_handed_out: set[int] = set()


def cpu_pool_processes(parent: int | None = None) -> list[psutil.Process]:
    """The live CPU-pool processes (:mod:`gateway.cpu_pool`) of process ``parent`` (default: this one), not
    multiprocessing's resource tracker beside them."""
    found = []
    for child in psutil.Process(parent).children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


@dataclass
class Receiver:
    """An HTTP server that records every POST by path; ``answers`` scripts the statuses a path gets."""

    server: ThreadingHTTPServer
    posts: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)
    held: dict[str, threading.Event] = field(default_factory=dict)
    """Paths whose first post is answered only once the event is set (then with its scripted status)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.posts.get(path, []))

    def wait_for(self, path: str, count: int, timeout: float = 60) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received(path)) < count:
            assert time.monotonic() < deadline, f"{path}: {len(self.received(path))} of {count} posts arrived"
            time.sleep(0.1)
        return self.received(path)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` on a free loopback port, serving from a thread until the block ends."""
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            target = holder[0]
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with target.lock:
                target.posts.setdefault(self.path, []).append((dict(self.headers.items()), body))
                scripted = target.answers.get(self.path)
                status = scripted.pop(0) if scripted else 200
                hold = target.held.pop(self.path, None)
            if hold is not None:
                hold.wait(120)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", target.url("/elsewhere"))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()


def can_mount_tmpfs(folder: Path) -> bool:
    """True where this user may mount a tmpfs in a mount namespace of its own (``unshare --mount
    --map-root-user``): the way tests give a process a small disk that the kernel itself fills."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--mount", "--map-root-user", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(folder)]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now, not handed out before by this process."""
    for _ in range(200):
        port = random.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port found in 200 tries")


@dataclass
class FreshDatabase:
    """A database created for one gateway and removed afterwards."""

    url: str
    _drop: str | None = None

    @classmethod
    def create(cls, kind: str, folder: Path, *, migrated: bool = False) -> FreshDatabase:
        """A new, empty database; with ``migrated``, one already at the newest migration, copied from a template
        this test process migrated once (a gateway starting on it skips Alembic: 0.5-0.9 of the 2.9 CPU-seconds a
        ``batchgw serve`` takes to be ready on an empty SQLite database)."""
        if kind == "sqlite":
            path = folder / "gateway.db"
            if migrated:
                source, copy = sqlite3.connect(_sqlite_template()), sqlite3.connect(path)
                try:
                    source.backup(copy)
                finally:
                    source.close()
                    copy.close()
            return cls(url=f"sqlite:///{path}")
        assert PG_URL, "BATCHGW_TEST_DATABASE_URL is not set"
        name = f"bgw_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{_pg_template()}"' if migrated else ""
        admin = create_engine(_sync_pg(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
        admin.dispose()
        return cls(url=_pg_database_url(name), _drop=name)

    def drop(self) -> None:
        if not self._drop or not PG_URL:
            return
        admin = create_engine(_sync_pg(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._drop}" WITH (FORCE)'))
        admin.dispose()


_templates: dict[str, str] = {}
"""This test process's migrated template databases: the SQLite file's path, the PostgreSQL database's name."""


def _sqlite_template() -> str:
    if "sqlite" not in _templates:
        from gateway.db.engine import upgrade_to_head

        path = Path(tempfile.mkdtemp(prefix="batchgw-template-")) / "gateway.db"
        upgrade_to_head(f"sqlite:///{path}")
        _templates["sqlite"] = str(path)
    return _templates["sqlite"]


def _pg_template() -> str:
    if "postgresql" not in _templates:
        from gateway.db.engine import upgrade_to_head

        template = FreshDatabase.create("postgresql", Path(tempfile.gettempdir()))
        upgrade_to_head(template.url)  # its engine is disposed after: a template must have no connection
        assert template._drop is not None
        _templates["postgresql"] = template._drop
    return _templates["postgresql"]


def _pg_database_url(name: str) -> str:
    assert PG_URL, "BATCHGW_TEST_DATABASE_URL is not set"
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove this test process's template databases."""
    if (path := _templates.pop("sqlite", None)) is not None:
        shutil.rmtree(Path(path).parent, ignore_errors=True)
    if (name := _templates.pop("postgresql", None)) is not None:
        FreshDatabase(url=_pg_database_url(name), _drop=name).drop()


def _sync_pg(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def migrated_context(database_kind: str, folder: Path) -> AsyncIterator[GatewayContext]:
    """A gateway context (default settings) on a fresh database at head; closed and the database dropped after."""
    from gateway.context import GatewayContext
    from gateway.settings import Settings

    database = FreshDatabase.create(database_kind, folder, migrated=True)
    settings = Settings(data_dir=folder, database_url=database.url)
    context = GatewayContext.create(settings)
    try:
        yield context
    finally:
        await context.close()
        database.drop()


@dataclass
class GatewayProcess:
    """A ``batchgw`` subprocess (serve or worker) with its environment."""

    data_dir: Path
    database_url: str
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
        env.update(
            {
                "BATCHGW_DATA_DIR": str(self.data_dir),
                "BATCHGW_DATABASE_URL": self.database_url,
                "BATCHGW_PORT": str(self.port),
                "BATCHGW_HOST": "127.0.0.1",
                "BATCHGW_ADMIN_KEY": "test-admin-key",
                # A stopped test process ends within the 15 s stop() waits for (tests of the grace set their own).
                "BATCHGW_WORKER__SHUTDOWN_GRACE_S": "2",
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``batchgw`` command against this gateway's database."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self, *args: str, wait_ready: bool = True) -> GatewayProcess:
        command = args or ("serve",)
        for _ in range(3):
            self.log_path = self.data_dir / f"{command[0]}-{int(time.time() * 1000)}.log"
            _gateway_logs.append(self.log_path)
            log = self.log_path.open("wb")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *command], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
            if not (wait_ready and command[0] == "serve"):
                return self
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                # Another process took the port between choosing and binding it: choose again.
                if "address already in use" not in self.log() or "BATCHGW_PORT" in self.extra_env:
                    raise
                self.port = free_port()
        raise RuntimeError(f"gateway could not bind a port in 3 tries:\n{self.log()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                # Ready only when the answer came from this process, not from a server of another test that
                # held the port while this one was starting (this one then exits: the port is in use).
                if loopback.get(f"{self.base_url}/readyz", timeout=1).status_code == 200 and self.listens():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready:\n{self.log()}")

    def listens(self) -> bool:
        """True when this process listens on its port."""
        assert self.process is not None
        with contextlib.suppress(psutil.Error):
            return any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                for c in psutil.Process(self.process.pid).net_connections(kind="tcp")
            )
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def create_key(self, team: str) -> str:
        """A client key for ``team``: through the admin API when this process serves it, else the CLI."""
        admin_key = self.env().get("BATCHGW_ADMIN_KEY")
        serving = self.process is not None and self.process.poll() is None and self.process.args[3:4] == ["serve"]
        if serving and admin_key:
            response = loopback.post(
                f"{self.base_url}/admin/keys",
                json={"team": team},
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=30,
            )
            assert response.status_code == 201, response.text
            return str(response.json()["key"])
        return self.cli("keys", "create", "--team", team).stdout.strip().splitlines()[-1]

    def client(self, key: str, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=key,
            _strict_response_validation=True,
            max_retries=0,
            **kwargs,  # type: ignore[arg-type]
        )


_gateway_logs: list[Path] = []
"""The log of every gateway process this test process started, for the report of a failing test."""
_TEST_STARTED = pytest.StashKey[float]()
FAILURE_LOG_TAIL_CHARS = 8_000


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_TEST_STARTED] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report carries the end of each gateway log written while it ran: a 500 or a stuck
    batch is explained there, and the test's folders may be gone by the time anyone reads the report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    started = item.stash.get(_TEST_STARTED, None)
    if not report.failed or started is None:
        return
    for path in _gateway_logs:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= started:
                text = path.read_text(errors="replace")[-FAILURE_LOG_TAIL_CHARS:]
                report.sections.append((f"gateway log {path.parent.name}/{path.name}", text))


_made_in_test: list[tuple[GatewayProcess, FreshDatabase | None]] | None = None
"""Gateways a test body makes (as opposed to fixtures): stopped and dropped as soon as that test ends, so
modules that start a gateway per test do not hold database connections for the whole module."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    global _made_in_test
    _made_in_test = []
    try:
        yield
    finally:
        made, _made_in_test = _made_in_test, None
        for gw, _ in made:
            gw.stop()
        for _, db in made:
            if db is not None:
                db.drop()


@pytest.fixture(scope="module", params=DATABASES)
def database_kind(request: pytest.FixtureRequest) -> str:
    """Each module runs once per available database."""
    return str(request.param)


@pytest.fixture(scope="module")
def gateway_factory(
    tmp_path_factory: pytest.TempPathFactory, database_kind: str
) -> Iterator[type[GatewayProcess] | object]:
    """Build gateway processes on fresh databases; all are stopped and dropped at the end."""
    made: list[tuple[GatewayProcess, FreshDatabase]] = []

    def make(extra_env: dict[str, str] | None = None, database: FreshDatabase | None = None) -> GatewayProcess:
        folder = tmp_path_factory.mktemp("gateway")
        db = database or FreshDatabase.create(database_kind, folder, migrated=True)
        gw = GatewayProcess(data_dir=folder, database_url=db.url, port=free_port(), extra_env=extra_env or {})
        if _made_in_test is not None:
            _made_in_test.append((gw, None if database is not None else db))
        else:
            made.append((gw, db))
        return gw

    yield make
    for gw, _ in made:
        gw.stop()
    for _, db in made:
        db.drop()


@pytest.fixture(scope="module")
def gateway(gateway_factory: object) -> GatewayProcess:
    """One running gateway with default settings, shared by a test module."""
    return gateway_factory().start()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="module")
def team_key(gateway: GatewayProcess) -> str:
    """A client key of team ``acme``."""
    return gateway.create_key("acme")


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess, team_key: str) -> openai.OpenAI:
    """The official SDK pointed at the gateway, with strict response validation."""
    return gateway.client(team_key)


# --- emulated providers (used by tests/engine) ------------------------------------------------------------

pytest.register_assert_rewrite("tests.engine")  # detailed assertion messages from the shared engine helpers

ENGINE_ENV = {
    "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": "0.2",
    "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": "1",
}
"""Worker settings for end-to-end engine tests: provider polls every 0.2 s at first, backing off to 1 s."""

SIMULATED_PROVIDERS = {"fast": 0.0, "other": 0.0, "steady": 1.0, "slow": 5.0}
"""The emulated providers of the ``simulator`` fixture and their processing delay in seconds."""


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorCluster]:
    """OpenAI-protocol provider emulators on free loopback ports, with a control server (``control_url``).

    Each of ``fast``, ``other``, ``steady`` and ``slow`` serves gpt-4o-mini, llama-3.3-70b and
    text-embedding-3-small; they differ only in processing delay (see ``SIMULATED_PROVIDERS``).
    Switch faults with ``POST {control_url}/providers/{name}/faults`` and clear jobs, log, counters
    and faults with ``POST {control_url}/providers/{name}/reset``.
    """
    from gateway.simulator import ProviderSpec, SimulatorCluster

    models = ["gpt-4o-mini", "llama-3.3-70b", "text-embedding-3-small"]
    specs = [
        ProviderSpec(name=name, models=models, processing_delay_s=delay) for name, delay in SIMULATED_PROVIDERS.items()
    ]
    with SimulatorCluster(specs, control_port=0) as cluster:
        yield cluster


def simulated_provider_env(
    cluster: SimulatorCluster, folder: Path, providers: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Write a gateway provider file pointing at emulated providers; return the env for ``gateway_factory``.

    ``providers`` maps a gateway provider name to ``{"emulator": <emulated provider>, "models":
    {<gateway model>: <emulator model>}, "limits": {<ProviderLimits field>: value}, "kind": <adapter kind>}``
    ("limits" optional; "kind" defaults to "openai", "openai_sync" drives the emulator request by request;
    "webhook_secret_env" optional).
    Several gateway providers may share one emulator. The env also carries ``ENGINE_ENV``.
    """
    lines: list[str] = []
    for name, spec in providers.items():
        lines += [
            f"[providers.{name}]",
            f"kind = {json.dumps(spec.get('kind', 'openai'))}",
            f"base_url = {json.dumps(cluster.base_url(spec['emulator']))}",
            "models = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in spec["models"].items()) + " }",
            *(
                [f"webhook_secret_env = {json.dumps(spec['webhook_secret_env'])}"]
                if "webhook_secret_env" in spec
                else []
            ),
            f"[providers.{name}.limits]",
            *(f"{key} = {json.dumps(value)}" for key, value in spec.get("limits", {}).items()),
            "",
        ]
    path = folder / "providers.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return {"BATCHGW_CONFIG_FILE": str(path), **ENGINE_ENV}


# --- S3-compatible object storage (moto's standalone server) ------------------------------------------------

S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_REGION": "us-east-1",
    # Never ask a cloud metadata service for credentials: only the keys above are used.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
}
"""Environment of every process that talks to the test S3 server (it accepts any keys)."""


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """The S3 test server's credentials in this process's environment (and no other AWS identity), where
    in-process S3 clients, emulators included, and the AWS request signer read them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
            patch.delenv(name, raising=False)
        for name, value in S3_TEST_CREDENTIALS.items():
            patch.setenv(name, value)
        yield


@dataclass
class S3Server:
    """A real S3-wire server (moto's standalone server) on loopback."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def client(self, **credentials: str) -> Any:
        """A boto3 S3 client on the server: an independent view of what the gateway stored."""
        import boto3

        keys = {
            "aws_access_key_id": S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        } | credentials
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1", **keys)

    def new_bucket(self) -> str:
        """Create an empty bucket with a fresh name and return the name."""
        name = f"bgw-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object of a bucket under ``prefix``, with its size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found

    def pending_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        return [item["Key"] for item in self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def storage_env(self, bucket: str, prefix: str = "gw") -> dict[str, str]:
        """The environment of a ``batchgw`` process keeping its blobs in ``bucket``."""
        return {
            **S3_TEST_CREDENTIALS,
            "BATCHGW_STORAGE__URL": f"s3://{bucket}/{prefix}",
            "BATCHGW_STORAGE__ENDPOINT_URL": self.endpoint_url,
            "BATCHGW_STORAGE__ALLOW_HTTP": "true",
        }


def start_s3_server(extra_env: dict[str, str] | None = None) -> S3Server:
    """Start moto's standalone S3 server as a subprocess on a free loopback port; wait until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))} | (extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 test server exited with {process.returncode}")
        try:
            loopback.get(f"{endpoint}/moto-api/data.json", timeout=1)
            return S3Server(endpoint_url=endpoint, process=process)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("the S3 test server did not answer within 30 s")


def stop_s3_server(server: S3Server) -> None:
    """Stop a server started by :func:`start_s3_server`."""
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-wire server for this test session (one per test worker); make a bucket per use with ``new_bucket``."""
    pytest.importorskip("moto.server", reason="moto[server] (test extra) is the S3 test server")
    server = start_s3_server()
    yield server
    stop_s3_server(server)
