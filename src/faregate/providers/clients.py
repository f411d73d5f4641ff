"""One client per provider, picked by `Deployment.provider`, behind the one-client interface
the gateway calls (`send`, `stream`, `check`). Every client sends through the one pooled
session `open` hands over; `close` closes it, once."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from faregate.config import Deployment
from faregate.providers.base import UpstreamClient, UpstreamReply, UpstreamSession


class _Client(UpstreamClient, Protocol):
    def use(self, session: UpstreamSession) -> None: ...


class ProviderClients:
    def __init__(self, clients: Mapping[str, _Client], default: str = "openai") -> None:
        self._clients = dict(clients)
        self._default = self._clients[default]
        self._session: UpstreamSession | None = None

    def client(self, d: Deployment) -> UpstreamClient:
        """The client for `d`'s provider ("openai" serves every OpenAI-compatible server)."""
        return self._clients.get(d.provider, self._default)

    def open(self, session: UpstreamSession) -> None:
        """Send every provider's requests through `session` (base.pooled_session), which this
        object then owns: `close` closes it."""
        self._session = session
        for client in self._clients.values():
            client.use(session)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        return await self.client(d).send(d, path, body)

    def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        return self.client(d).stream(d, path, body)

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        self.client(d).check(d, path, body)
