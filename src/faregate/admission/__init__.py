"""Admission: one decision per request over budgets, rate windows and parallel limits,
in-process or shared through Redis; the period calendar is its one rule for time."""
