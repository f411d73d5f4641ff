"""The fields admin bodies share, each declared once: ids, the budget terms every payer's body
takes (max_budget, budget_duration, tpm_limit, rpm_limit, max_parallel_requests), and the
refusal of LiteLLM fields faregate does not implement. A term is then refused alike on every
route: a bound is the same 400 everywhere, and a budget_duration that is no duration is
accounts/terms.py's one rule (a 400 naming budget_duration), checked as the body is read.
No `from __future__ import annotations` here: pydantic reads the annotations.
"""

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from faregate.accounts.terms import TERM_FIELDS, duration, refuse_unsupported
from faregate.wire.storable import INT32_MAX, MAX_BUDGET_DOLLARS

Id = Annotated[str, Field(min_length=1, max_length=256)]
# money in dollars: max_budget, soft_budget, max_budget_in_team (nano-dollars fit a BIGINT)
Dollars = Annotated[float, Field(ge=0, le=MAX_BUDGET_DOLLARS)]
# tpm, rpm, parallel requests, per model too: INTEGER columns
Limit = Annotated[int, Field(ge=0, le=INT32_MAX)]
BudgetDuration = Annotated[str | None, BeforeValidator(duration)]


class TermFields(BaseModel):
    """A payer's budget terms as its body takes them: null is no term, left out is unchanged."""

    model_config = ConfigDict(extra="forbid")

    max_budget: Dollars | None = None
    budget_duration: BudgetDuration = None
    tpm_limit: Limit | None = None
    rpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None

    def terms(self) -> dict[str, Any]:
        """The terms the body gives, by name."""
        return {name: getattr(self, name) for name in TERM_FIELDS
                if name in self.model_fields_set}


class Unsupported(BaseModel):
    """A body that refuses, with a 400 naming it, a LiteLLM field of `unsupported` (name ->
    why faregate does not implement it); one whose value asks for nothing is dropped."""

    unsupported: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unsupported(data, cls.unsupported)
            return {k: v for k, v in data.items() if k not in cls.unsupported}
        return data
