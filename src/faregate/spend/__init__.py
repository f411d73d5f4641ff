"""Spend: what a request may cost (pricing) and the ledger that records what it did cost."""
