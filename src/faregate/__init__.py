"""faregate: an OpenAI-compatible LLM gateway with virtual keys, budgets that hold, a ledger."""

__version__ = "0.1.0"
