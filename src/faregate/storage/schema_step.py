"""The schema step of `faregate serve` and `faregate migrate`, run in a process of its own.

    python -m faregate.storage.schema_step upgrade|check   # the URL in FAREGATE_SCHEMA_URL

Alembic, its migration scripts and the synchronous engine they use cost a serving process
~11-14 MB of RSS that it would keep for its whole life, in every worker; run here, they leave
with this process. `faregate.cli.commands` starts it and imports neither it nor
`storage.migrate`. The exit status says what happened: 0 done, 2 a configuration error (the
message on stderr), OUTAGE_EXIT the database cannot serve yet (the reason, one line, on
stdout: the parent retries), anything else a crash (its traceback on stderr).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from faregate.errors import ConfigError
from faregate.storage import migrate
from faregate.storage.health import is_outage, outage_reason

URL_ENV = "FAREGATE_SCHEMA_URL"     # not argv: a URL's password would show in `ps`
OUTAGE_EXIT = 75                    # EX_TEMPFAIL


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("upgrade", "check") or URL_ENV not in os.environ:
        print(f"usage: {URL_ENV}=URL python -m faregate.storage.schema_step upgrade|check",
              file=sys.stderr)
        return 64
    url = os.environ[URL_ENV]
    try:
        if argv[0] == "check":
            migrate.require_current(url)
        else:
            migrate.upgrade(url)
    except ConfigError as exc:
        print(f"faregate: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_outage(exc):
            raise
        print(outage_reason(exc), flush=True)
        return OUTAGE_EXIT
    if argv[0] == "upgrade":
        print(f"faregate: schema is at revision {migrate.head_revision()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
