"""The error a ledger row keeps: what a request ended with, short, storable and without secrets.

`row_error(exc, secrets)` is `<type>/<code>: <message>` (the OpenAI error type and code the
caller received; the class name for an exception that is not a GatewayError), the message cut to
its first MESSAGE_CHARS characters. It is built only for a request that did not succeed, so a
success pays nothing for it.

The message is the upstream's (as providers/base.py read it from the error body) or the
gateway's own, and an upstream may put anything there; so before it is kept:

- each of `secrets` (the deployment's api_key, its api_base when that carries credentials) and
  anything shaped like a credential (`Bearer ...`, `Basic ...`, `sk-...`, `key=...`) becomes
  `[redacted]`;
- what the database cannot store (wire/storable.py's rules: NUL, lone surrogates) and control
  characters (line breaks of an HTML error page) become U+FFFD or a space;
- it is cut to MESSAGE_CHARS characters, and the whole to the column's width, so that it can
  never make the database refuse the row (a refused row is dead-lettered, spend/dead_letters.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from faregate.errors import GatewayError
from faregate.storage.schema import LEDGER_ERROR_CHARS

MESSAGE_CHARS = 300                 # of the message kept
LABEL_CHARS = 64                    # of "<type>/<code>"
ERROR_CHARS = LEDGER_ERROR_CHARS     # the column's width
# Read this much of a message before redacting: a secret that starts within the part kept
# is read whole (keys are far shorter than the slack), and a 1 MB error body costs no more.
_READ_CHARS = MESSAGE_CHARS * 4
_REDACTED = "[redacted]"
_CREDENTIAL = re.compile(
    r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"                # an Authorization header's value
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"                # OpenAI/Anthropic/LiteLLM-style keys
    r"|\b(api[_-]?key|x-api-key|key|token|secret|password|authorization)"
    r"(\"?\s*[=:]\s*\"?)(?:(?:bearer|basic)\s+)?[^\s\"',;&]+")   # key=..., "api_key": "..."
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 controls and DEL as spaces; NUL as U+FFFD (it is not text a reader should miss).
_CONTROLS = {c: " " for c in [*range(0x20), 0x7F]} | {0: "\ufffd"}


def row_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """What the ledger row of a request that ended with `exc` keeps (see the module doc)."""
    if isinstance(exc, GatewayError):
        label = exc.type if exc.code in (None, exc.type) else f"{exc.type}/{exc.code}"
        message = exc.message
    elif isinstance(exc, asyncio.CancelledError):
        label, message = "cancelled", "the request ended before an answer (the client went " \
                                      "away, or the gateway was stopping)"
    else:
        label, message = type(exc).__name__, str(exc)
    label = storable_text(label)[:LABEL_CHARS]
    text = f"{label}: {storable_text(redact(message[:_READ_CHARS], secrets))[:MESSAGE_CHARS]}"
    return text[:ERROR_CHARS]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with each of `secrets` and anything shaped like a credential as [redacted]."""
    for secret in sorted(secrets, key=len, reverse=True):    # one inside another: whole first
        if len(secret) >= 4:                     # a 1-character "secret" would shred the text
            text = text.replace(secret, _REDACTED)
    return _CREDENTIAL.sub(_credential_redacted, text)


def _credential_redacted(match: re.Match[str]) -> str:
    if match.group(1):                           # Bearer / Basic: keep the scheme's name
        return f"{match.group(1)} {_REDACTED}"
    if match.group(2):                           # name=value: keep the name
        return f"{match.group(2)}{match.group(3)}{_REDACTED}"
    return _REDACTED


def storable_text(text: str) -> str:
    """`text` as any database stores it: no NUL, no lone surrogate (U+FFFD each), no control
    characters (a space each)."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
    if not text.isprintable():
        text = text.translate(_CONTROLS)
    return text
