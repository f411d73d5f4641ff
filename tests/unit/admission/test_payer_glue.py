"""The glue between a key's payers and admission: the payers built from a loaded key (who
pays, never a scope twice), and spend a stopped process left credited to every payer's
account, not only the key's."""

from __future__ import annotations

from datetime import UTC, datetime

from faregate.admission.budgets import Budgets
from faregate.admission.payers import PayersByKey, end_user_payer, payers_of
from faregate.errors import BudgetExceeded
from faregate.records import (
    EndUserRecord,
    KeyPayers,
    KeyRecord,
    MemberRecord,
    OrganizationRecord,
    TeamRecord,
    UserRecord,
)
from faregate.spend.holds import KeyHolds

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def scopes(key: KeyRecord, above: KeyPayers) -> list[str]:
    return [p.scope for p in payers_of(key, "0", above)]


def test_a_team_key_is_paid_by_team_member_and_the_teams_organization() -> None:
    key = KeyRecord("tok", "sk-...tok", user_id="u1", team_id="t1", organization_id="o-key")
    above = KeyPayers(key, UserRecord("u1"), TeamRecord("t1", organization_id="o1"),
                      MemberRecord("t1", "u1"), OrganizationRecord("o1"))
    assert scopes(key, above) == ["key:tok", "team:t1", "member:t1:u1", "org:o1"]


def test_a_personal_key_is_paid_by_its_user_and_its_organization() -> None:
    key = KeyRecord("tok", "sk-...tok", user_id="u1", organization_id="o1")
    above = KeyPayers(key, UserRecord("u1"), organization=OrganizationRecord("o1"))
    assert scopes(key, above) == ["key:tok", "user:u1", "org:o1"]


def test_a_key_whose_team_is_gone_is_paid_by_the_key_alone() -> None:
    key = KeyRecord("tok", "sk-...tok", user_id="u1", team_id="gone", organization_id="o1")
    above = KeyPayers(key, UserRecord("u1"), organization=OrganizationRecord("o1"))
    assert scopes(key, above) == ["key:tok"]


def test_an_end_user_is_added_once_and_the_key_tuple_is_reused() -> None:
    key = KeyRecord("tok", "sk-...tok")
    table = PayersByKey()
    customer = end_user_payer(EndUserRecord("c1", max_budget_nanos=5))
    first = table.of(key, "0", None, customer)
    assert [p.scope for p in first] == ["key:tok", "end_user:c1"]
    assert table.of(key, "0") is table.of(key, "0")        # no tuple built per request


def test_rows_left_behind_are_credited_to_every_payer_with_an_account() -> None:
    budgets = Budgets(lambda: NOW, 1.0, lambda *_: None)
    team = payers_of(KeyRecord("tok", "sk-...tok", team_id="t1"), "0",
                     KeyPayers(KeyRecord("tok", "sk-...tok", team_id="t1"),
                               team=TeamRecord("t1", max_budget_nanos=100)))
    budgets.account_of(team[1])             # this process already admits for the team
    holds = KeyHolds()
    holds.on_written(budgets.credit)
    holds.on_payers_written(budgets.credit_payer)
    holds.written([], {"tok": 90}, {"team:t1": 90, "org:none-kept": 7})
    try:
        budgets.try_reserve(team, 20, 20)
    except BudgetExceeded as exc:
        assert "Team=t1" in str(exc)
    else:
        raise AssertionError("the team's credited spend was not counted")
