"""Who pays for each key's requests, built once per loaded key record: a request then
allocates no Payer of its own for the key and what is above it (the key's record is the same
object while it is cached); only an end user is added per request."""

from __future__ import annotations

from collections.abc import Mapping

from faregate.admission.demand import (
    END_USER,
    MEMBER,
    ORG,
    TEAM,
    USER,
    Payer,
    key_payer,
    period_end,
)
from faregate.records import EndUserRecord, KeyPayers, KeyRecord

# Past this many keys the table starts over: a bound on memory, not a cache policy (the next
# request of each key builds its tuple again).
MAX_KEYS = 100_000


class PayersByKey:
    def __init__(self) -> None:
        self._known: dict[str, tuple[KeyRecord, str, tuple[Payer, ...]]] = {}

    def of(self, key: KeyRecord, version: str, above: KeyPayers | None = None,
           end_user: Payer | None = None,
           versions: Mapping[str, str] | None = None) -> tuple[Payer, ...]:
        """The payers of `key` as loaded at `version`: the key, then from `above` (loaded with
        the key, budget_id fallbacks applied) its user, team, member and organization, each
        at its version in `versions` (by scope; "0" when absent), then `end_user`. No scope
        appears twice (it would be booked twice)."""
        hit = self._known.get(key.token)
        if hit is not None and hit[0] is key and hit[1] == version:
            payers = hit[2]
        else:
            payers = payers_of(key, version, above, versions)
            if len(self._known) >= MAX_KEYS:
                self._known.clear()
            self._known[key.token] = (key, version, payers)
        if end_user is None or any(p.scope == end_user.scope for p in payers):
            return payers
        return (*payers, end_user)


def payers_of(key: KeyRecord, version: str, above: KeyPayers | None,
              versions: Mapping[str, str] | None = None) -> tuple[Payer, ...]:
    """The key and what `above` loaded with it: the user for a personal key only (a team key
    is paid by the team and the member, not the user's own budget), the team, the member
    (team and user), the organization (the team's, else the key's). A team that is gone
    leaves the key alone above it: no member, no organization through it."""
    out = [key_payer(key, version)]
    if above is None:
        return tuple(out)
    at = versions or {}
    team, user, member, org = above.team, above.user, above.member, above.organization
    if key.team_id is None and user is not None:
        scope = f"user:{user.user_id}"
        out.append(Payer(scope, USER, user.user_id, user.max_budget_nanos,
                         user.spend_nanos, user.period_base_nanos, user.budget_duration,
                         period_end(user.budget_reset_at, user.budget_duration,
                                    user.created_at), user.max_parallel_requests, user.rpm_limit,
                         user.tpm_limit, at.get(scope, "0")))
    if team is not None:
        scope = f"team:{team.team_id}"
        out.append(Payer(scope, TEAM, team.team_id, team.max_budget_nanos,
                         team.spend_nanos, team.period_base_nanos, team.budget_duration,
                         period_end(team.budget_reset_at, team.budget_duration,
                                    team.created_at), team.max_parallel_requests, team.rpm_limit,
                         team.tpm_limit, at.get(scope, "0")))
        if member is not None:
            scope = f"member:{member.team_id}:{member.user_id}"
            out.append(Payer(scope, MEMBER, f"{member.user_id}:{member.team_id}",
                             member.max_budget_in_team_nanos, member.spend_nanos,
                             member.period_base_nanos, member.budget_duration,
                             member.budget_reset_at, None, member.rpm_limit,
                             member.tpm_limit, at.get(scope, "0")))
    if org is not None and (team is not None or key.team_id is None):
        scope = f"org:{org.organization_id}"
        out.append(Payer(scope, ORG, org.organization_id,
                         org.max_budget_nanos, org.spend_nanos, org.period_base_nanos,
                         org.budget_duration,
                         period_end(org.budget_reset_at, org.budget_duration, org.created_at),
                         org.max_parallel_requests,
                         org.rpm_limit, org.tpm_limit, at.get(scope, "0")))
    return tuple(out)              # each level at most once: no scope is booked twice


def end_user_payer(end_user: EndUserRecord, version: str = "0") -> Payer:
    return Payer(f"end_user:{end_user.end_user_id}", END_USER, end_user.end_user_id,
                 end_user.max_budget_nanos, end_user.spend_nanos, end_user.period_base_nanos,
                 end_user.budget_duration,
                 period_end(end_user.budget_reset_at, end_user.budget_duration,
                            end_user.created_at),
                 end_user.max_parallel_requests, end_user.rpm_limit, end_user.tpm_limit,
                 version)
