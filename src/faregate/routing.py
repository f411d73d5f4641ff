"""Model name -> deployments. The one place that knows which upstreams serve a public model.

Every `model_list` entry (and every model stored through /model/new) is a deployment; entries
that share a `model_name` are deployments of one model. `replace` swaps the whole table at once,
so a request sees the table before a change or after it, never half of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from faregate.config import Deployment


class Router:
    def __init__(self, deployments: Iterable[Deployment]) -> None:
        self._table: dict[str, tuple[Deployment, ...]] = {}
        self.replace(deployments)

    def replace(self, deployments: Iterable[Deployment]) -> None:
        table: dict[str, list[Deployment]] = {}
        for d in deployments:
            table.setdefault(d.model_name, []).append(d)
        self._table = {name: tuple(ds) for name, ds in table.items()}

    def names(self) -> list[str]:
        return list(self._table)

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        """Every deployment of `model`, in configuration order; empty if there is none."""
        return self._table.get(model, ())
