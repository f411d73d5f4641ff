"""KeyDirectory: the in-memory view of virtual keys that the request path reads.

A hit costs a dict lookup. Admin changes made through this process replace the entry at once;
entries also expire after `ttl_s` so that changes made elsewhere are picked up. Unknown tokens
are remembered briefly so a flood of bad keys does not become a flood of queries, and requests
that miss on the same key at once (its entry just expired) share one read: under load, an
expiry used to send every request in flight to the database at once, one query each, queued on
SQLite's one connection (a p99 of 300-600 ms at c=32, once a minute).

A key whose spend rows left by another process are still on their way to the database (held,
spend/holds.py) is read only once they are there: the row read then counts them, so admission
starts from the whole spend. A request for such a key waits for that (up to `hold_wait_s`), then
gets the documented 503 `database_unavailable`; other keys never wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from faregate.admission.payers import payers_of
from faregate.errors import ServiceUnavailable
from faregate.keys.shared_reads import SharedReads
from faregate.records import KeyPayers, KeyRecord
from faregate.spend.holds import KeyHolds
from faregate.storage.health import DatabaseHealth, is_outage
from faregate.storage.protocols import KeyStore, parse_scope

_NEGATIVE_TTL_S = 2.0
_OUTAGE_RECHECK_S = 5.0      # during an outage, how often a cached key tries the database
_MAX_NEGATIVE = 10_000
# How long a request waits for its key's left-behind spend rows to reach the database.
HOLD_WAIT_S = 5.0


VersionSource = Callable[[str], Awaitable[str]]
# A cache entry: (record, version, expires at, payers, payer versions).
_Entry = tuple[KeyRecord, str, float, "KeyPayers | None", Mapping[str, str]]
# What a lookup answers: (record, version, payers, payer versions).
_Found = tuple["KeyRecord | None", str, "KeyPayers | None", Mapping[str, str]]
# A key with its user, team, member, organization and their named budgets, in one read.
PayersSource = Callable[[str], Awaitable[KeyPayers | None]]
NO_VERSIONS: Mapping[str, str] = {}
# Re-reads of a key's payers while their scopes keep changing, before admission decides.
_PAYER_READS = 3


class KeyDirectory:
    """With a version source (Redis mode), each entry remembers the key's version as it was
    read *before* the row, so shared admission can tell a stale entry from a fresh one."""

    def __init__(self, storage: KeyStore, clock: Callable[[], float], ttl_s: float,
                 versions: VersionSource | None = None,
                 health: DatabaseHealth | None = None, holds: KeyHolds | None = None,
                 hold_wait_s: float = HOLD_WAIT_S,
                 payers: PayersSource | None = None,
                 payer_versions: VersionSource | None = None) -> None:
        """`payers`: read a key with everything above it (storage.get_key_payers) instead of
        its row alone; each entry then keeps them, with budget_id fallbacks applied.
        `payer_versions` (Redis mode): a payer's version by scope, read before its row."""
        self._storage = storage
        self._payers = payers
        self._payer_versions = payer_versions
        self._holds = holds
        self._hold_wait_s = hold_wait_s
        self._health = health
        self._clock = clock
        self._ttl_s = ttl_s
        self._versions = versions
        self._known: dict[str, _Entry] = {}
        self._unknown: dict[str, float] = {}
        self._reads: SharedReads[str, _Found] = SharedReads()

    @property
    def shared(self) -> bool:
        """Other processes change keys too (Redis mode)."""
        return self._versions is not None

    async def get(self, token: str) -> KeyRecord | None:
        return (await self.lookup(token))[0]

    async def lookup(self, token: str) -> tuple[KeyRecord | None, str]:
        record, version, _, _ = await self.lookup_payers(token)
        return record, version

    async def lookup_payers(self, token: str) -> tuple[KeyRecord | None, str, KeyPayers | None,
                                                       Mapping[str, str]]:
        """The key (its null terms filled from its named budget), the version it was read at,
        what pays above it (None without a payers source), and (Redis mode) each payer's
        version by scope, read before its row."""
        if self._health is not None and self._health.refuses_requests:
            raise _database_down()
        if self._holds is not None and self._holds.held(token):
            await self._wait_for_replay(token)
            self._known.pop(token, None)           # read before those rows: read it again
        now = self._clock()
        hit = self._known.get(token)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1], hit[3], hit[4]
        miss_until = self._unknown.get(token)
        if miss_until is not None and miss_until > now:
            return None, "0", None, NO_VERSIONS
        return await self._reads.read(token, lambda: self._read(token, hit, now))

    async def _read(self, token: str, hit: _Entry | None, now: float) -> _Found:
        """The key's row (and payers) from the database into the cache; `hit`: the expired
        entry, kept through an outage when allow_requests_on_db_unavailable is on."""
        version = await self._versions(token) if self._versions is not None else "0"
        above: KeyPayers | None = None
        versions = NO_VERSIONS
        try:
            if self._payers is None:
                record = await self._storage.get_key(token)
            else:
                above, versions = await self._read_payers(token)
                record = above.key if above is not None else None
        except Exception as exc:
            if self._health is None or not is_outage(exc):
                raise
            self._health.failed(exc)
            if not self._health.serve_while_down:
                raise _database_down() from None
            if hit is None:
                raise _database_down(unknown_key=True) from None
            # allow_requests_on_db_unavailable: a key this process knows keeps working as it
            # was last read; budgets and limits go on from what this process has seen.
            self._known[token] = (hit[0], hit[1], now + min(self._ttl_s, _OUTAGE_RECHECK_S),
                                  hit[3], hit[4])
            return hit[0], hit[1], hit[3], hit[4]
        if record is None:
            if len(self._unknown) >= _MAX_NEGATIVE:
                self._unknown.clear()
            self._unknown[token] = now + _NEGATIVE_TTL_S
        else:
            self._known[token] = (record, version, now + self._ttl_s, above, versions)
        return record, version, above, versions

    async def _read_payers(self, token: str) -> tuple[KeyPayers | None, Mapping[str, str]]:
        """The key's payers; in Redis mode with each payer's version read before the row that
        is kept (the payers are known only from a first read, so it is read again; if they
        keep changing, admission finds the versions stale and reloads)."""
        assert self._payers is not None
        above = await self._payers(token)
        if above is None or self._payer_versions is None:
            return (above.with_budget_terms() if above is not None else None), NO_VERSIONS
        versions: dict[str, str] = {}
        for _ in range(_PAYER_READS):
            scopes = [p.scope for p in payers_of(above.key, "0", above)[1:]]
            if not scopes:
                break
            versions = {scope: await self._payer_versions(scope) for scope in scopes}
            again = await self._payers(token)
            if again is None:
                return None, NO_VERSIONS
            above = again
            if [p.scope for p in payers_of(above.key, "0", above)[1:]] == scopes:
                break
        return above.with_budget_terms(), versions

    async def read_settled(self, token: str) -> KeyRecord | None:
        """The key's row from the database, once no spend row left behind for it is still on
        its way there (the Redis admission loads a key's spend with this)."""
        if self._holds is not None and self._holds.held(token):
            await self._wait_for_replay(token)
        return await self._storage.get_key(token)

    async def _wait_for_replay(self, token: str) -> None:
        if self._holds is not None and not await self._holds.wait(token, self._hold_wait_s):
            raise ServiceUnavailable(
                "Spend rows for this key left by a gateway process that stopped are not in the "
                "database yet (it is unreachable, or the key's row is locked), so the key's "
                "budget cannot be checked; retry shortly", code="database_unavailable")

    def put(self, record: KeyRecord) -> None:
        """This process changed the key: drop the entry (with its version) and let the next
        request read the row again; without Redis, keep the new record at once."""
        self._unknown.pop(record.token, None)
        self._reads.forget(record.token)
        if self._versions is not None or self._payers is not None:
            # (with payers: the team, budget ... are read with the row, so read them again)
            self._known.pop(record.token, None)
        else:
            self._known[record.token] = (record, "0", self._clock() + self._ttl_s, None,
                                         NO_VERSIONS)

    def forget(self, token: str) -> None:
        self._known.pop(token, None)
        self._unknown.pop(token, None)
        self._reads.forget(token)

    def forget_payer(self, scope: str) -> None:
        """An admin changed a payer above keys (a user, team, member or organization):
        drop every entry it pays for, so their next request reads it again (a scan: admin
        changes are rare; the cache holds only keys in use)."""
        level, ids = parse_scope(scope)
        if level == "key":
            self.forget(ids[0])
            return
        for token, (record, _, _, payers, _) in list(self._known.items()):
            team = payers.team if payers is not None else None
            paid_by: dict[str, set[tuple[str | None, ...]]] = {
                "user": {(record.user_id,)}, "team": {(record.team_id,)},
                "member": {(record.team_id, record.user_id)},
                "org": {(record.organization_id,),
                        (team.organization_id if team is not None else None,)}}
            if ids in paid_by.get(level, set()):
                self._known.pop(token, None)


def _database_down(unknown_key: bool = False) -> ServiceUnavailable:
    if unknown_key:
        return ServiceUnavailable(
            "The database is unreachable and this key has not been seen by this gateway "
            "replica since it started, so it cannot be verified; retry shortly",
            code="database_unavailable")
    return ServiceUnavailable(
        "The database is unreachable and general_settings.allow_requests_on_db_unavailable is "
        "off, so requests are refused until it is back; retry shortly",
        code="database_unavailable")
