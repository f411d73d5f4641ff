"""Probes for the /organization, /customer (and /end_user) and /budget routes, swept by
tests/api/test_unstorable_input.py: a valid request to each (routes that change or delete
name ids that do not exist, so a value that slips through changes nothing but the status)."""

from __future__ import annotations

from typing import Any, Protocol


class _Probe(Protocol):
    def __call__(self, body: dict[str, Any] | None = ...,
                 query: dict[str, str] = ...) -> Any: ...


def account_probes(probe: _Probe) -> dict[tuple[str, str], Any]:
    terms: dict[str, Any] = {"max_budget": 1.5, "budget_duration": "30d", "tpm_limit": 100,
                             "rpm_limit": 10, "max_parallel_requests": 2}
    org = {"organization_alias": "probe-org", "models": ["qwen-local"], "blocked": False,
           "metadata": {"a": ["b", 1], "n": {"d": "y"}}, **terms}
    customer = {"alias": "probe-customer", "blocked": False, "metadata": {"a": "b"}, **terms}
    member = {"user_id": "probe-user", "user_email": "p@example.com", "role": "org_admin"}
    out: dict[tuple[str, str], Any] = {
        ("POST", "/budget/new"): probe({"budget_id": "probe-budget", **terms}),
        ("POST", "/budget/info"): probe({"budgets": ["no-such-budget"]}),
        ("POST", "/budget/update"): probe({"budget_id": "no-such-budget", **terms}),
        ("POST", "/budget/delete"): probe({"id": "no-such-budget"}),
        ("GET", "/budget/list"): probe(),
        ("POST", "/organization/new"): probe({"organization_id": "probe-org", **org}),
        ("GET", "/organization/info"): probe(query={"organization_id": "no-such-org"}),
        ("GET", "/organization/list"): probe(query={"limit": "5", "after": "no-such-org"}),
        ("POST", "/organization/member_add"): probe({"organization_id": "no-such-org",
                                                     "member": [member]}),
    }
    for method in ("PATCH", "POST"):
        out[method, "/organization/update"] = probe({"organization_id": "no-such-org",
                                                     **org})
        out[method, "/organization/member_update"] = probe({
            "organization_id": "no-such-org", **member})
    for method in ("DELETE", "POST"):
        out[method, "/organization/delete"] = probe({"organization_ids": ["no-such-org"]})
        out[method, "/organization/member_delete"] = probe({
            "organization_id": "no-such-org", "user_id": "probe-user",
            "user_email": "p@example.com"})
    for prefix in ("/customer", "/end_user"):
        out["POST", f"{prefix}/new"] = probe({"user_id": f"probe{prefix}", **customer})
        out["GET", f"{prefix}/info"] = probe(query={"end_user_id": "no-such-customer"})
        out["POST", f"{prefix}/update"] = probe({"user_id": "no-such-customer", **customer})
        out["POST", f"{prefix}/delete"] = probe({"user_ids": ["no-such-customer"]})
        out["GET", f"{prefix}/list"] = probe(query={"limit": "5",
                                                    "after": "no-such-customer"})
        out["POST", f"{prefix}/block"] = probe({"user_ids": ["no-such-customer"]})
        out["POST", f"{prefix}/unblock"] = probe({"user_ids": ["no-such-customer"]})
    return out
