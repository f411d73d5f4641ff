"""Failed UI logins per client address: after `limit` failures within `window_s` seconds, that
address's next logins are refused (429 with Retry-After) until its oldest failure in the window
ages out. Other addresses are untouched, and a refused attempt checks no key, so it teaches a
guesser nothing and does not extend its own wait.

Per process: with several workers or replicas an address gets `limit` failures on each. The
address is the TCP peer (`faregate serve` does not trust X-Forwarded-For), so behind a reverse
proxy every user shares the proxy's address and its allowance: rate-limit logins at the proxy
there (docs/security.md).
"""

from __future__ import annotations

from collections import deque

LIMIT = 10
WINDOW_S = 60
# Addresses tracked at once. Past this, the address whose failures began longest ago is
# forgotten first (memory stays bounded under a flood from many addresses).
MAX_ADDRESSES = 10_000


class LoginThrottle:
    def __init__(self, limit: int = LIMIT, window_s: int = WINDOW_S,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until `address` may try again (at least 1); None: it may try now."""
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window_s - now + 0.999))

    def failed(self, address: str, now: float) -> None:
        """A login from `address` was refused (unknown, blocked or expired key)."""
        failures = self._recent(address, now)
        if failures is None:
            if len(self._failures) >= self._max_addresses:
                self._forget_old(now)
            failures = self._failures[address] = deque(maxlen=self.limit)
        failures.append(now)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def _forget_old(self, now: float) -> None:
        for address in [a for a, f in self._failures.items() if f[-1] <= now - self.window_s]:
            del self._failures[address]
        while len(self._failures) >= self._max_addresses:
            del self._failures[next(iter(self._failures))]
