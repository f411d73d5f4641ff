"""A spend row the database refused shows in readiness (which stays 200), in /metrics, and in
`faregate dead-letters` (issue 13, finding 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from api.conftest import RunningGateway
from support import MASTER_KEY, chat

from faregate.cli.commands import main
from faregate.keys.tokens import hash_key
from faregate.records import SpendRow
from faregate.spend.dead_letters import DEAD_LETTER_STATUS
from faregate.storage.protocols import SpendQuery


async def test_a_refused_row_is_reported_and_the_ledger_keeps_flowing(
        gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = await gateway.new_key(max_budget=1)
    client = gateway.sdk(key)
    await client.chat.completions.create(**chat("before"))
    now = datetime.now(UTC)
    # What the edge refuses now, injected straight into the ledger: a lone surrogate.
    gateway.app.ledger.record(SpendRow("poison-1", hash_key(key), None, "openai/x\ud800y", "u",
                                       "chat_completion", 1, 1, 123, now, now, "success"))
    await client.chat.completions.create(**chat("after"))
    await gateway.app.ledger.flush()

    ready = await gateway.http.get("/health/readiness")
    assert ready.status_code == 200 and ready.json()["spend_rows_dead_lettered"] == 1
    metrics = await gateway.http.get("/metrics",
                                     headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert "faregate_ledger_dead_letter_rows 1.0" in metrics.text
    rows = await gateway.app.storage.spend_logs(SpendQuery(api_key=hash_key(key)))
    assert sorted(r["status"] for r in rows) == [DEAD_LETTER_STATUS, "success", "success"]

    # The command, on the same journal directory.
    config = tmp_path / "dead-letters.yaml"
    config.write_text(yaml.safe_dump({"general_settings": {
        "spend_buffer_dir": str(gateway.app.settings.spend_buffer_dir),
        "database_url": gateway.app.settings.database_url}}))
    assert main(["dead-letters", "list", "--config", str(config)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["request_id"], x["model"], x["counted"]) for x in listed] == \
        [("poison-1", "openai/x\ud800y", True)]
    assert main(["dead-letters", "resolve", "--config", str(config)]) == 2   # names nothing
    assert main(["dead-letters", "resolve", "--all", "--config", str(config)]) == 0
    assert (await gateway.http.get("/health/readiness")).json()["spend_rows_dead_lettered"] == 0
