"""The `faregate` command. It declares commands and calls the same services the API uses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

import uvicorn

from faregate import config
from faregate.app import Faregate
from faregate.catalog import rotation
from faregate.catalog.sealing import Sealer, SealingError
from faregate.cli import validate
from faregate.errors import ConfigError
from faregate.mocks import anthropic_server as mock_anthropic
from faregate.mocks import openai_server as mock
from faregate.observe import logs
from faregate.spend import dead_letters
from faregate.spend.dead_letters import DeadLetters
from faregate.storage.database import SqlStorage


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faregate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="LiteLLM-style config.yaml (none: demo model, SQLite)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes (more than 1 needs REDIS_URL)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--no-migrate", action="store_true", help=argparse.SUPPRESS)

    mig = commands.add_parser("migrate", help="bring the database schema up to date")
    mig.add_argument("--config")

    mock_cmd = commands.add_parser("mock-upstream", help="run the mock OpenAI-compatible upstream")
    mock_cmd.add_argument("--host", default="127.0.0.1")
    mock_cmd.add_argument("--port", type=int, default=8001)
    mock_cmd.add_argument("--latency-ms", type=float, default=0.0)
    mock_cmd.add_argument("--api-key", help="require this bearer key")
    mock_cmd.add_argument("--template-tokens", type=int, default=3,
                          help="prompt tokens its chat template adds (default 3)")

    anth = commands.add_parser("mock-anthropic",
                               help="run the mock Anthropic Messages API (checks each request)")
    anth.add_argument("--host", default="127.0.0.1")
    anth.add_argument("--port", type=int, default=8002)
    anth.add_argument("--api-key", help="require this x-api-key (default: any non-empty one)")

    rot = commands.add_parser(
        "rotate-salt-key", help="re-encrypt every stored credential under a new salt key")
    rot.add_argument("--config")
    rot.add_argument("--new-key-env", default="FAREGATE_NEW_SALT_KEY", metavar="NAME",
                     help="the environment variable holding the new key "
                          "(default FAREGATE_NEW_SALT_KEY); never pass a key itself")

    dead = commands.add_parser(
        "dead-letters", help="spend rows the database refused: list, retry, resolve")
    dead.add_argument("action", choices=("list", "retry", "resolve"),
                      help="list them; retry the rows not counted yet; resolve (drop) entries")
    dead.add_argument("--config")
    dead.add_argument("--request-id", action="append", default=[], metavar="ID",
                      help="resolve: this entry (repeat for more)")
    dead.add_argument("--all", action="store_true", help="resolve: every entry")

    val = commands.add_parser("validate", help="run the runbook's validation against a gateway")
    val.add_argument("--base-url", default="http://127.0.0.1:4000")
    val.add_argument("--master-key", default=os.environ.get("FAREGATE_MASTER_KEY"))
    val.add_argument("--model", default="qwen-local")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            url = config.load_database_url(os.environ, args.config)
            status, said = _schema_step(url, "upgrade")
            if status == _SCHEMA_OUTAGE_EXIT:
                print(f"faregate: database {_redacted(url)} cannot serve: {said}",
                      file=sys.stderr)
            elif said:
                print(said, flush=True)
            return status
        if args.command == "rotate-salt-key":
            return _rotate_salt_key(args)
        if args.command == "dead-letters":
            return _dead_letters(args)
        if args.command == "mock-anthropic":
            print(f"faregate mock Anthropic on http://{args.host}:{args.port}", flush=True)
            mock_anthropic.serve(args.host, args.port, args.api_key)
            return 0
        if args.command == "mock-upstream":
            print(f"faregate mock upstream on http://{args.host}:{args.port}/v1", flush=True)
            mock.serve(args.host, args.port, args.latency_ms, args.api_key,
                       args.template_tokens)
            return 0
        if not args.master_key:
            parser.error("validate needs --master-key (or FAREGATE_MASTER_KEY)")
        return validate.run(args.base_url, args.master_key, args.model)
    except ConfigError as exc:
        print(f"faregate: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    settings = config.load(os.environ, args.config)
    logs.configure(settings.log_format)
    weak_key = settings.master_key_warning()
    if weak_key is not None:
        logging.getLogger("faregate.config").warning(weak_key)
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1 and not settings.redis_url:
        raise ConfigError("--workers > 1 needs REDIS_URL (or general_settings.redis_url): "
                          "workers share budgets and rate limits through Redis; without it "
                          "each would enforce them alone")
    if args.workers > 1 and settings.demo_mock:
        raise ConfigError("--workers > 1 needs a --config; the demo runs one worker")
    if not args.no_migrate:
        status = _migrate_once_reachable(settings)
        if status != 0:
            return status
    if args.workers > 1:
        return _supervise(args)
    with _demo_upstream(settings) as settings:
        print(f"faregate: listening on http://{args.host}:{args.port} (OpenAI API under /v1)\n"
              f"faregate: models: {', '.join(settings.models())}\n"
              f"faregate: database: {_redacted(settings.database_url)}\n"
              f"faregate: admission: {_admission_mode(settings)}\n"
              f"faregate: master key from {settings.master_key_source}", flush=True)
        sockets = [_reuse_port_socket(args.host, args.port)] if args.reuse_port else None
        app = Faregate.from_settings(settings)
        server = _DrainingServer(app.begin_drain, uvicorn.Config(
            app, host=args.host, port=args.port, loop="uvloop",
            http="httptools", lifespan="on", access_log=False, log_level="warning",
            log_config=None,            # uvicorn's own lines go through our formatter too
            proxy_headers=False,
            # uvicorn annotates int, but hands it to asyncio.timeout, which takes a float
            timeout_graceful_shutdown=settings.graceful_shutdown_timeout_s,  # type: ignore[arg-type]
        ))
        server.run(sockets=sockets)
    return 0 if server.started else 1


_START_RETRY_MAX_S = 30.0


# The schema step runs in a child process (storage/schema_step.py), so that Alembic and the
# migration scripts never load into a serving process (~11-14 MB of RSS per worker, kept for
# its life). Its interface, repeated here since importing it would load them:
_SCHEMA_STEP = "faregate.storage.schema_step"
_SCHEMA_URL_ENV = "FAREGATE_SCHEMA_URL"
_SCHEMA_OUTAGE_EXIT = 75


def _schema_step(url: str, step: str) -> tuple[int, str]:
    """Run `step` ("upgrade" or "check") on `url` in a child process: (its exit status, what
    it printed on stdout). Its stderr (errors, a traceback) goes straight to ours."""
    done = subprocess.run([sys.executable, "-m", _SCHEMA_STEP, step], stdout=subprocess.PIPE,
                          text=True, env={**os.environ, _SCHEMA_URL_ENV: url}, check=False)
    return done.returncode, done.stdout.strip()


def _migrate_once_reachable(settings: config.Settings) -> int:
    """Migrate (or check the schema) at start; while the database cannot serve (down, starting,
    refusing connections, out of connections), say so in one line and retry with backoff, 1 s
    doubling to 30 s, until it can or the process is stopped (SIGTERM, SIGINT). Returns the
    step's exit status: 0, or the failure the step has already reported on stderr."""
    delay = 1.0
    step = "check" if settings.disable_schema_update else "upgrade"
    while True:
        status, said = _schema_step(settings.database_url, step)
        if status != _SCHEMA_OUTAGE_EXIT:
            return status
        print(f"faregate: database {_redacted(settings.database_url)} cannot serve yet "
              f"({said}); retrying in {delay:.0f}s", file=sys.stderr, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, _START_RETRY_MAX_S)


def _rotate_salt_key(args: argparse.Namespace) -> int:
    """Seal under the new key; open under it, FAREGATE_SALT_KEY and FAREGATE_SALT_KEY_PREVIOUS."""
    new = config.new_salt_key(os.environ, args.new_key_env)
    current, previous = config.load_salt_keys(os.environ, args.config)
    old = [k for k in (current, *previous) if k is not None]
    url = config.load_database_url(os.environ, args.config)
    try:
        summary = asyncio.run(_rotate_database(url, Sealer(new, old),
                                               lambda: datetime.now(UTC)))
    except SealingError as exc:
        print(f"faregate: {exc}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(f"faregate: {line}", flush=True)
    return 1 if summary.failed else 0


async def _rotate_database(database_url: str, sealer: Sealer, now: Callable[[], datetime]
                           ) -> rotation.RotationSummary:
    """Rotate the stored models of the database at this URL."""
    storage = SqlStorage.from_url(database_url)
    try:
        return await rotation.rotate(storage, sealer, now)
    finally:
        await storage.close()


def _dead_letters(args: argparse.Namespace) -> int:
    settings = config.load(os.environ, args.config)
    letters = DeadLetters(settings.spend_buffer_dir)
    if args.action == "list":
        for letter in letters.read():
            row = letter.row
            print(json.dumps({"request_id": row.request_id, "api_key": row.api_key,
                              "key_alias": row.key_alias, "model": row.model,
                              "spend_nanos": row.spend_nanos, "status": row.status,
                              "counted": letter.stored, "reason": letter.reason,
                              "sqlstate": letter.sqlstate, "at": letter.at.isoformat()}))
        return 0
    if args.action == "resolve":
        if not args.all and not args.request_id:
            print("faregate: resolve needs --request-id ID (repeatable) or --all",
                  file=sys.stderr)
            return 2
        ids = {letter.row.request_id for letter in letters.read()} if args.all \
            else set(args.request_id)
        print(f"faregate: resolved {letters.remove(ids)} dead-lettered spend rows")
        return 0
    storage = SqlStorage.from_url(settings.database_url)

    async def retry() -> dead_letters.Retried:
        try:
            return await dead_letters.retry(letters, storage)
        finally:
            await storage.close()

    done = asyncio.run(retry())
    print(f"faregate: {len(done.originals)} rows written as recorded (entries removed), "
          f"{len(done.copies)} as storable copies (entries kept, marked counted), "
          f"{len(done.refused)} still refused")
    return 1 if done.refused else 0


def _admission_mode(settings: config.Settings) -> str:
    if settings.redis_url:
        return f"shared through Redis (if unreachable: {settings.redis_failure_mode})"
    return "in process"


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """Several worker processes bind the same port; the kernel spreads connections."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _supervise(args: argparse.Namespace) -> int:
    """Run `--workers` copies of this server on one port, and stop them together."""
    command = [sys.executable, "-m", "faregate", "serve", "--host", args.host, "--port",
               str(args.port), "--workers", "1", "--reuse-port", "--no-migrate"]
    if args.config:
        command += ["--config", args.config]
    with tempfile.TemporaryDirectory(prefix="faregate-metrics-") as fresh:
        # Workers write their metrics there so that a scrape of any one of them sums all.
        env = {**os.environ,
               "PROMETHEUS_MULTIPROC_DIR": os.environ.get("PROMETHEUS_MULTIPROC_DIR") or fresh}
        return _run_workers(command, env, args)


def _run_workers(command: list[str], env: dict[str, str], args: argparse.Namespace) -> int:
    """Start the workers; restart one that dies (a crash, an OOM kill), so that its
    replacement replays the spend rows the dead one left on disk; stop them all on a signal.

    A worker that dies within WORKER_MIN_LIFE_S of its start is not restarted (a bad config
    would only crash again): the others are stopped and this exits 1.
    """
    workers = [_Worker(command, env) for _ in range(args.workers)]
    print(f"faregate: {args.workers} workers (pids {', '.join(str(w.proc.pid) for w in workers)}) "
          f"on port {args.port}", flush=True)
    stop_signal: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop_signal.append(signum)
        for worker in workers:
            worker.signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    while any(w.proc.poll() is None for w in workers):
        time.sleep(0.2)
        for i, worker in enumerate(workers):
            code = worker.proc.poll()
            if code is None or stop_signal or failed:
                continue
            if time.monotonic() - worker.started < WORKER_MIN_LIFE_S:
                print(f"faregate: worker {worker.proc.pid} exited with {code} right after "
                      "starting; stopping", file=sys.stderr, flush=True)
                failed = True
                for other in workers:
                    other.signal(signal.SIGTERM)
                continue
            workers[i] = _Worker(command, env)
            print(f"faregate: worker {worker.proc.pid} died ({code}); started "
                  f"{workers[i].proc.pid} in its place", file=sys.stderr, flush=True)
    # A worker stopped by the forwarded signal before it could install its handlers had
    # nothing in flight yet: that is a clean stop too.
    clean = (0, -signal.SIGTERM, -signal.SIGINT)
    return 0 if not failed and all(w.proc.returncode in clean for w in workers) else 1


WORKER_MIN_LIFE_S = 5.0


class _Worker:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, env=env)
        self.started = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)


class _DrainingServer(uvicorn.Server):
    """SIGTERM is an orchestrator's ordinary stop: drain, flush the ledger, exit 0.

    uvicorn re-raises the signal after its graceful shutdown, which would make every rolling
    deploy look like a crash; this keeps its handlers and drops the re-raise. The app hears
    of the drain at its start (`on_drain`), before in-flight requests finish.
    """

    def __init__(self, on_drain: Callable[[], Awaitable[None]], config: uvicorn.Config) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self._on_drain()
        except Exception:
            logging.getLogger("faregate").exception("the start of the drain failed")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def _demo_upstream(settings: config.Settings) -> Iterator[config.Settings]:
    """With no config, serve the demo model from the built-in mock, in its own process."""
    if not settings.demo_mock:
        yield settings
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mock_proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-upstream", "--port",
                             str(port)], stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        deployments = tuple(dataclasses.replace(d, api_base=f"http://127.0.0.1:{port}/v1")
                            for d in settings.deployments)
        print(f"faregate: no --config given: serving the demo model '{config.DEMO_MODEL}' "
              f"from the built-in mock upstream (pid {mock_proc.pid}, port {port})", flush=True)
        yield dataclasses.replace(settings, deployments=deployments)
    finally:
        mock_proc.terminate()
        mock_proc.wait(10)


def _wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ConfigError(f"the demo mock upstream did not start on port {port}")


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
