"""What a serving process loads: the schema step's Alembic stays in its own child process."""

from __future__ import annotations

import subprocess
import sys


def test_the_serving_process_does_not_load_alembic() -> None:
    """`faregate serve` imports the command line and the app; Alembic and the migration
    scripts (~11-14 MB of RSS per worker, for the process's life) load only in the schema
    step's child, `python -m faregate.storage.schema_step`."""
    probe = ("import sys, faregate.cli.commands, faregate.app; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic' "
             "or m.startswith('faregate.storage.migrat') or m == 'faregate.storage.schema_step'))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_the_redis_client_loads_only_with_a_redis_url() -> None:
    """One machine (no REDIS_URL) never uses the Redis client: ~6 MB of RSS per worker
    it does not load. faregate.app imports it where it builds the Redis admission."""
    probe = ("import sys, faregate.cli.commands, faregate.app; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
