"""One client per provider, picked by `Deployment.provider`, behind the one-client interface
the gateway calls (`send`, `stream`); `open` and `close` reach every client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from faregate.config import Deployment
from faregate.providers.openai_compat import UpstreamClient, UpstreamReply


class _Client(UpstreamClient, Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


class ProviderClients:
    def __init__(self, clients: Mapping[str, _Client], default: str = "openai") -> None:
        self._clients = dict(clients)
        self._default = self._clients[default]

    def client(self, d: Deployment) -> UpstreamClient:
        """The client for `d`'s provider ("openai" serves every OpenAI-compatible server)."""
        return self._clients.get(d.provider, self._default)

    async def open(self) -> None:
        for client in self._clients.values():
            await client.open()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        return await self.client(d).send(d, path, body)

    def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        return self.client(d).stream(d, path, body)

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        self.client(d).check(d, path, body)
