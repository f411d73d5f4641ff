"""Which serving processes share this database, and whether this one may admit requests.

Admission without Redis is exact only inside one process (admission/local.py): two processes
on one database would each spend a key's whole budget and each enforce every rate limit
alone. So each process registers in `faregate_replicas` and beats every BEAT_S; a row not
refreshed for STALE_S is a process gone. A process without shared admission (no REDIS_URL)
admits only while it is the oldest live process and no live process admits through Redis:

- in a misconfiguration (two replicas without Redis) the first keeps serving and the others
  refuse, loudly, instead of every process over-admitting (or all of them refusing);
- in a rolling deploy of one replica (the new pod starts, then the old one drains) the new
  process waits for the old one, which leaves the table at the start of its drain: for up to
  HANDOVER_S it still says ready and holds requests (admission/sole.py), so the handover
  refuses nothing. docs/replicas.md walks through it.

With Redis, every process may admit; the heartbeat only reports the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from faregate.storage.protocols import Replica, ReplicaStore

log = logging.getLogger("faregate.replicas")

BEAT_S = 1.0
STALE_S = 5.0           # five missed beats: the process is gone
HANDOVER_S = 60.0       # a process waiting for older ones still says ready this long
LEAVE_TIMEOUT_S = 2.0   # at the start of a drain, how long removing our row may take


@dataclass(frozen=True)
class Standing:
    """This process's place among the live ones."""

    admitting: bool
    others: tuple[Replica, ...] = ()
    reason: str | None = None       # why this process refuses, naming the others


def standing(me: Replica, live: Sequence[Replica]) -> Standing:
    """The rule: with shared admission always admit; without it, admit only while no live
    process shares admission and none is older (by start on the database's clock, then id)."""
    others = tuple(r for r in live if r.replica_id != me.replica_id)
    if me.shares_admission or not others:
        return Standing(True, others)
    sharing = [r for r in others if r.shares_admission]
    mine = next((r for r in live if r.replica_id == me.replica_id), me)
    older = [r for r in others if _order(r) < _order(mine)]
    if not sharing and not older:
        return Standing(True, others)
    blocking = ", ".join(_named(r) for r in (sharing or older))
    why = ("admits through Redis" if sharing else "started first")
    return Standing(False, others, (
        f"Another faregate process on this database ({blocking}) {why}, and this one has no "
        "REDIS_URL: without shared admission each process would enforce budgets and rate "
        "limits alone. Set REDIS_URL (general_settings.redis_url) on every replica to run "
        "several; this process serves again once it is the only one."))


def _order(r: Replica) -> tuple[str, str]:
    return (r.started_at.isoformat() if r.started_at else "", r.replica_id)


def _named(r: Replica) -> str:
    return f"{r.host} pid {r.pid}"


def shown(r: Replica) -> dict[str, object]:
    """A replica as readiness shows it."""
    return {"replica_id": r.replica_id, "host": r.host, "pid": r.pid,
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "seen_s_ago": round(r.seen_s_ago, 1), "shares_admission": r.shares_admission}


class ReplicaHeartbeat:
    """This process's row in the replicas table, beaten every `beat_s` on a task, and the
    standing read at each beat. `leave()` removes the row (the start of a drain)."""

    def __init__(self, store: ReplicaStore, shares_admission: bool,
                 monotonic: Callable[[], float], *, beat_s: float = BEAT_S,
                 stale_s: float = STALE_S, handover_s: float = HANDOVER_S) -> None:
        self._store = store
        self.me = Replica(secrets.token_hex(8), this_host(), os.getpid(), shares_admission)
        self._monotonic = monotonic
        self._beat_s = beat_s
        self._stale_s = stale_s
        self._handover_s = handover_s
        # Until the first beat answers, a process without Redis does not know it is alone.
        self.standing = Standing(shares_admission)
        self._refused_since: float | None = None if shares_admission else monotonic()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._left = False
        self._failing = False

    async def start(self) -> None:
        """One beat now (so a lone process admits from its first request), then the loop."""
        try:
            await self._beat()
        except Exception as exc:
            # Only the check is missing, not admission: serve as before it existed.
            log.error("could not register this process in faregate_replicas (%s); serving "
                      "without the check that no other process shares this database", exc)
            self._set(Standing(True))
        self._task = asyncio.create_task(self._run(), name="replica-heartbeat")

    async def leave(self) -> None:
        """Stop beating and remove this process's row, so that a process waiting for it may
        admit at once. Called at the start of a drain; safe to call again."""
        if self._left:
            return
        self._left = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.wait_for(self._store.remove_replica(self.me.replica_id),
                                   LEAVE_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not remove this process from faregate_replicas (%r); the others "
                        "see it gone %.0f s after its last beat", exc, self._stale_s)

    def ready(self) -> bool:
        """Readiness: admitting, or waiting for older processes for less than HANDOVER_S (a
        rolling deploy's new pod must get ready before the old one is stopped)."""
        if self.standing.admitting or self._refused_since is None:
            return True
        return self._monotonic() - self._refused_since < self._handover_s

    async def wait_admitting(self, timeout_s: float) -> Standing:
        """The standing once this process may admit, or as it is after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.standing.admitting:
                    self._changed.clear()
                    await self._changed.wait()
        return self.standing

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._beat_s)
            try:
                await self._beat()
                if self._failing:
                    log.info("faregate_replicas heartbeat written again")
                self._failing = False
            except Exception as exc:
                # The database's outage is reported elsewhere; the last standing holds.
                if not self._failing:
                    log.warning("faregate_replicas heartbeat failed (%r); keeping the last "
                                "standing", exc)
                self._failing = True

    async def _beat(self) -> None:
        live = await self._store.beat_replica(self.me, self._stale_s)
        # On this host, a process that no longer exists is gone now, not in STALE_S (a
        # restart after SIGKILL).
        self._set(standing(self.me, [r for r in live if r.host != self.me.host
                                     or r.pid == self.me.pid or _exists(r.pid)]))

    def _set(self, new: Standing) -> None:
        old, self.standing = self.standing, new
        if new.admitting != old.admitting or _ids(new) != _ids(old):
            self._say(new)
        if new.admitting:
            self._refused_since = None
            self._changed.set()
        elif self._refused_since is None:
            self._refused_since = self._monotonic()

    def _say(self, new: Standing) -> None:
        if not new.admitting:
            log.error("REFUSING requests: %s", new.reason)
        elif not new.others:
            log.info("this process is the only one on its database: admitting")
        elif not self.me.shares_admission:
            # Newer processes without Redis refuse (they say so); this one goes on.
            log.error("other faregate processes without shared admission use this database "
                      "(%s); they refuse requests while this one serves. Set REDIS_URL on "
                      "every replica to run several",
                      ", ".join(_named(r) for r in new.others))
        elif any(not r.shares_admission for r in new.others):
            log.error("faregate processes without REDIS_URL share this database (%s): they "
                      "refuse requests while any process admits through Redis",
                      ", ".join(_named(r) for r in new.others if not r.shares_admission))


def this_host() -> str:
    """The host name, with the pid namespace where there is one: containers sharing a host
    name (host networking) have pids of their own, so host + pid names one process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()[:256]
    return f"{socket.gethostname()[:200]} {namespace}"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ids(s: Standing) -> set[str]:
    return {r.replica_id for r in s.others}
