"""Who pays for each key's requests, built once per loaded key record: a request then
allocates no Payer of its own (the key's record is the same object while it is cached)."""

from __future__ import annotations

from faregate.admission.demand import Payer, key_payer
from faregate.records import KeyRecord

# Past this many keys the table starts over: a bound on memory, not a cache policy (the next
# request of each key builds its tuple again).
MAX_KEYS = 100_000


class PayersByKey:
    def __init__(self) -> None:
        self._known: dict[str, tuple[KeyRecord, str, tuple[Payer, ...]]] = {}

    def of(self, key: KeyRecord, version: str) -> tuple[Payer, ...]:
        """The payers of `key` as loaded at `version`: the key alone for now; the code that
        loads a key's user, team, membership, organization and end user adds them here."""
        hit = self._known.get(key.token)
        if hit is not None and hit[0] is key and hit[1] == version:
            return hit[2]
        payers = (key_payer(key, version),)
        if len(self._known) >= MAX_KEYS:
            self._known.clear()
        self._known[key.token] = (key, version, payers)
        return payers
