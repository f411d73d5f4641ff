"""Spend: what a request may cost (pricing), what a key may still spend (budgets), the ledger."""
