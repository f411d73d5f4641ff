"""The benchmark harness works end to end (a one-second smoke run; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_quick_run_prints_the_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    doc = tmp_path / "performance.md"
    doc.write_text("# Before\n<!-- bench:table -->\nold table\n<!-- /bench:table -->\nAfter\n")
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--seed-keys", "3",
                             "--seed-rows", "30", "--json", str(out), "--doc", str(doc)],
                            capture_output=True, text=True, timeout=180,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "req/s" in result.stdout and "cpu µs" in result.stdout and "cpu xbare" in result.stdout
    written = doc.read_text()          # the section between the markers is this run's table
    assert written.startswith("# Before\n<!-- bench:table -->\n`python -m bench --quick")
    assert "old table" not in written and "cpu xbare" in written
    assert written.endswith("<!-- /bench:table -->\nAfter\n")
    assert "seeded 3 keys and 30 spend rows" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["target"] for r in rows} == {"direct", "bare", "gateway"}
    assert {r["stream"] for r in rows} == {False, True}
    gateway = [r for r in rows if r["target"] == "gateway"]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows)
    assert all(r["cpu_us_per_req"] and r["cpu_us_per_req"] > 0 for r in gateway)
