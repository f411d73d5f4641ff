"""Reading an upstream's usage: the tokens a request is charged for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    completion: int
    cache_read: int = 0         # prompt tokens read from the upstream's prompt cache
    cache_write: int = 0        # prompt tokens written to it


def read_usage(usage: object) -> Usage | None:
    """The tokens in an upstream's `usage` member, or None if it is not readable."""
    try:
        prompt = int(usage.get("prompt_tokens") or 0)           # type: ignore[attr-defined]
        completion = int(usage.get("completion_tokens") or 0)   # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None
    return Usage(prompt, completion, *cache_tokens(usage))


def cache_tokens(usage: object) -> tuple[int, int]:
    """(read, written) prompt-cache tokens: Anthropic's counts, or OpenAI's cached_tokens."""
    try:
        read = usage.get("cache_read_input_tokens")                 # type: ignore[attr-defined]
        if read is None:
            read = (usage.get("prompt_tokens_details")              # type: ignore[attr-defined]
                    or {}).get("cached_tokens")
        written = usage.get("cache_creation_input_tokens")          # type: ignore[attr-defined]
        return int(read or 0), int(written or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0
