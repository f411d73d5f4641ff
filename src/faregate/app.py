"""The composition root: builds every concrete object from Settings and serves them as one ASGI
app. Hot OpenAI routes are matched by a dict lookup; everything else goes to the admin app.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from faregate.accounts.budgets import BudgetAdmin
from faregate.accounts.changes import PayerChanges
from faregate.accounts.customers import CustomerAdmin
from faregate.accounts.key_owners import KeyOwners
from faregate.accounts.organizations import OrganizationAdmin
from faregate.accounts.teams import TeamAdmin
from faregate.accounts.users import UserAdmin
from faregate.admission.budgets import Budgets
from faregate.admission.demand import Admission
from faregate.admission.local import LocalAdmission
from faregate.admission.payer_rows import PayerRows
from faregate.admission.sole import SoleAdmission
from faregate.api.admin_auth import Roles
from faregate.api.admin_routes import build_admin_app
from faregate.api.anthropic_routes import AnthropicRoutes
from faregate.api.budget_routes import build_budget_routes
from faregate.api.customer_routes import build_customer_routes
from faregate.api.health_routes import HealthRoutes
from faregate.api.metrics_route import MetricsRoute
from faregate.api.model_routes import build_model_routes
from faregate.api.openai_routes import OpenAIRoutes
from faregate.api.org_routes import build_org_routes
from faregate.api.spend_routes import build_spend_routes
from faregate.api.team_routes import build_team_routes
from faregate.api.upstream_probes import UpstreamProbes
from faregate.api.user_routes import build_user_routes
from faregate.catalog.routing import Router
from faregate.catalog.sealing import Sealer
from faregate.catalog.stored_models import ModelCatalog
from faregate.config import TEXT_COMPLETION_PROVIDER, Settings
from faregate.gateway import Gateway
from faregate.keys.admin import KeyAdmin
from faregate.keys.auth import Authenticator
from faregate.keys.directory import KeyDirectory
from faregate.keys.end_users import EndUsers
from faregate.observe.metrics import HealthChecks, Metrics
from faregate.providers.anthropic import AnthropicClient
from faregate.providers.base import pooled_session
from faregate.providers.clients import ProviderClients
from faregate.providers.openai_compat import OpenAICompatible
from faregate.providers.text_completion import TextCompletionClient
from faregate.spend.checkpoints import StreamCheckpoints
from faregate.spend.journal import SpendJournal
from faregate.spend.ledger import LedgerWriter
from faregate.spend.pricing import PromptBound
from faregate.storage.database import SqlStorage
from faregate.storage.health import DatabaseHealth, is_outage
from faregate.storage.protocols import Storage
from faregate.storage.replicas import ReplicaHeartbeat
from faregate.ui.pages import all_routes
from faregate.ui.site import UiServices, build_ui

if TYPE_CHECKING:
    from faregate.admission.shared import RedisAdmission

log = logging.getLogger("faregate")

# How long a request may wait for other requests' reservations on its key to settle.
BUDGET_WAIT_S = 30.0
# At shutdown with the database down, how long to keep trying before leaving rows on disk.
SHUTDOWN_FLUSH_RETRY_S = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class Faregate:
    """The gateway, on the storage it is given (and closes at shutdown)."""

    @classmethod
    def from_settings(cls, settings: Settings, *,
                      monotonic: Callable[[], float] = time.monotonic,
                      now: Callable[[], datetime] = utc_now,
                      rng: random.Random | None = None) -> Faregate:
        """The gateway on SQL storage at settings.database_url (SQLite or Postgres)."""
        return cls(settings, storage=SqlStorage.from_url(settings.database_url),
                   monotonic=monotonic, now=now, rng=rng)

    def __init__(self, settings: Settings, *, storage: Storage,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utc_now,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.db_health = DatabaseHealth(self.storage, monotonic,
                                        settings.allow_requests_on_db_unavailable)
        self.ledger = LedgerWriter(self.storage, settings.spend_flush_interval_s,
                                   SpendJournal(settings.spend_buffer_dir), self.db_health)
        self.budgets = Budgets(now, BUDGET_WAIT_S, self.ledger.record_period)
        local = LocalAdmission(self.budgets, BUDGET_WAIT_S)
        self.redis: RedisAdmission | None = None
        if settings.redis_url:
            # Replicas: admission is decided in Redis; Postgres stays the source of truth.
            # Its key loader waits for spend rows left behind to reach the database. (Imported
            # here: the Redis client is ~6 MB of every worker's memory, for nothing without.)
            from faregate.admission.shared import RedisAdmission

            self.redis = RedisAdmission(settings.redis_url,
                                        lambda token: self.directory.read_settled(token),
                                        self.ledger.record_period, BUDGET_WAIT_S,
                                        settings.redis_failure_mode, local, settings.replicas,
                                        load_payer=PayerRows(self.storage).load)
        # Processes on one database find each other; without Redis only one may admit.
        self.replicas = ReplicaHeartbeat(self.storage, self.redis is not None, monotonic)
        self.admission: Admission = self.redis or SoleAdmission(local, self.replicas)
        self.directory = KeyDirectory(self.storage, monotonic, settings.key_cache_ttl_s,
                                      self.redis.version if self.redis else None,
                                      self.db_health, self.ledger.holds,
                                      payers=self.storage.get_key_payers,
                                      payer_versions=self.redis.payer_version
                                      if self.redis else None)
        # End users are cached like keys; the first request of a new one creates it.
        self.end_users = EndUsers(self.storage, monotonic, settings.key_cache_ttl_s,
                                  settings.max_end_user_budget_id,
                                  self.redis.payer_version if self.redis else None)
        # Rows a stopped process left, once written, count in this process's accounts too.
        self.ledger.holds.on_written(self.budgets.credit)
        self.ledger.holds.on_payers_written(self.budgets.credit_payer)
        self.auth = Authenticator(settings.master_key, self.directory, now)
        # Who may call each admin route: LiteLLM's roles (api/admin_auth.py).
        self.roles = Roles(self.auth, self.storage)
        # Users and teams pay above their keys: admin changes to them reach admission.
        payer_changes = PayerChanges(self.admission,
                                     self.redis.payer_changed if self.redis else None,
                                     self._forget_cached_payer)
        self.users = UserAdmin(self.storage, payer_changes, now)
        self.keys = KeyAdmin(self.storage, self.directory, self.admission, now,
                             lambda: self.router.names(),   # config and stored models
                             self.redis.key_changed if self.redis else None,
                             is_master_key=settings.master_key.matches,
                             may_name=lambda name: self.router.serves(name)
                             or name in self.router.access_groups(),
                             owners=KeyOwners(self.storage, self.users))
        self.upstream = ProviderClients({"openai": OpenAICompatible(),
                                         "anthropic": AnthropicClient(),
                                         TEXT_COMPLETION_PROVIDER: TextCompletionClient()})
        self.router = Router(settings.deployments, settings.router_settings,
                             monotonic=monotonic, rng=rng)
        # Open streams' progress on disk: a crash still charges what they delivered.
        self.checkpoints = StreamCheckpoints(settings.spend_buffer_dir, now)
        self.ledger.add_orphan_source(self.checkpoints.adopt_orphans)
        self.gateway = Gateway(self.router, self.auth, self.admission, PromptBound(),
                               self.upstream, self.ledger, self.checkpoints, now,
                               self.end_users)
        pings: dict[str, Callable[[], Awaitable[object]]] = {"database": self._ping_database}
        if self.redis is not None:
            pings["redis"] = self.redis.client.ping
        self.metrics = Metrics(lambda: self.ledger.pending, HealthChecks(pings),
                               settings.prometheus_multiproc_dir, self.router.health,
                               dead_letters=lambda: self.ledger.dead_lettered,
                               replicas=lambda: (len(self.replicas.standing.others),
                                                 not self.replicas.standing.admitting))
        self._routes = OpenAIRoutes(self.gateway, settings.max_request_body_bytes, self.metrics,
                                    settings.log_requests).routes
        self._routes.update(AnthropicRoutes(self.gateway, settings.max_request_body_bytes,
                                            self.metrics, settings.log_requests).routes)
        self._routes["GET", "/metrics"] = MetricsRoute(
            self.metrics, self.auth if settings.metrics_require_auth else None,
            settings.metrics_token)
        self._routes.update(HealthRoutes(self.db_health, self.ledger, self.roles,
                                         self.router.health, self.replicas,
                                         lambda: (self.models.unopened, self.models.kept),
                                         UpstreamProbes(self.router.entries, self.upstream)
                                         ).routes)
        self.admin = build_admin_app(self.roles, self.keys, self.storage)
        # Models kept in the database join the config's in the Router, credentials opened
        # only in memory; /model/* manage them.
        self.models = ModelCatalog(self.storage,
                                   Sealer(settings.salt_key, settings.previous_salt_keys),
                                   self.router, settings.deployments, now,
                                   settings.stored_models_poll_interval_s)
        self.admin.include_router(build_model_routes(self.roles, self.models))
        self.teams = TeamAdmin(self.storage, self.users, payer_changes, now, self.keys.delete)
        self.admin.include_router(build_user_routes(self.roles, self.users, self.keys))
        self.admin.include_router(build_team_routes(self.roles, self.teams, self.keys))
        self.admin.include_router(build_spend_routes(self.roles, self.storage))
        # Organizations, end users and named budgets: changes reach admission the same way.
        self.organizations = OrganizationAdmin(self.storage, payer_changes, now)
        self.customers = CustomerAdmin(self.storage, payer_changes, now)
        self.named_budgets = BudgetAdmin(self.storage, payer_changes, now)
        self.admin.include_router(build_org_routes(self.roles, self.organizations))
        self.admin.include_router(build_customer_routes(self.roles, self.customers))
        self.admin.include_router(build_budget_routes(self.roles, self.named_budgets))
        # The admin web UI (/ui): pages over the same services as the routes above, each
        # page admitted by the rule of the admin route it stands for (self.roles.admit).
        self.admin.mount("/ui", build_ui(UiServices(
            self.storage, self.keys, self.auth, settings.master_key, self.router, self.models,
            self.users, self.teams, self.organizations, self.customers, self.named_budgets,
            reserved=self.budgets.reserved, period_spend=self.admission.period_spend,
            now=now, admit=self.roles.admit), all_routes()))

    def _forget_cached_payer(self, scope: str) -> None:
        """An admin changed a payer: this process's next request reads it again."""
        self.directory.forget_payer(scope)
        self.end_users.forget_payer(scope)

    async def _ping_database(self) -> None:
        """The metrics' database gauge, from the same health the request path reads."""
        if not await self.db_health.probe():
            raise ConnectionError("the database is unreachable")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
            else:
                await self.admin(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        # One session for every provider's client (plain http: the lean HTTP/1.1 client).
        self.upstream.open(pooled_session(lean=self.settings.upstream_http_client == "http1"))
        await self.ledger.start()       # replays spend rows a crashed process left on disk
        self.checkpoints.start()
        self.db_health.start()
        await self.models.start()
        await self.replicas.start()     # registers; alone, it admits from the first request
        # Everything allocated so far (modules, the app) lives as long as the process: keep it
        # out of the cyclic GC's scans, whose full passes otherwise stall requests for ms.
        gc.freeze()

    async def begin_drain(self) -> None:
        """The start of a SIGTERM drain: leave the replicas table first, so that a process
        waiting for this one (a rolling deploy's new pod) admits at once."""
        await self.replicas.leave()

    async def shutdown(self) -> None:
        """Flush every spend row, then let go of connections."""
        await self.replicas.leave()
        await self.models.close()
        await self.db_health.stop()
        await self.checkpoints.close()
        try:
            await self.ledger.close(retry_s=SHUTDOWN_FLUSH_RETRY_S)
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Not lost: fsync'd on disk, and the next start on this volume writes them.
            log.error("database unreachable at shutdown: %d spend rows stay in %s for the next "
                      "start to write", self.ledger.pending, self.settings.spend_buffer_dir)
        finally:
            await self.upstream.close()
            await self.storage.close()
            if self.redis is not None:
                await self.redis.close()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("shutdown did not finish cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return
