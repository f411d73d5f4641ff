"""LiteLLM's `text-completion-openai/` provider: an OpenAI-compatible server that serves only
the legacy `/v1/completions` (a base model, an older vLLM or TGI setup).

Completions go out as to any OpenAI-compatible server (same client, same metering). Any other
call is refused with a 400 before anything is reserved. LiteLLM instead turns a chat request
into a completions one (one message: its text as the prompt; several: a list of prompts, which
the upstream answers as that many separate completions, each without the others' context, the
roles dropped) and the answer back into a chat one; faregate does not guess a prompt template
for a model it cannot see, so the caller is told to call /v1/completions.
"""

from __future__ import annotations

from typing import Any

from faregate.config import Deployment
from faregate.errors import InvalidRequest
from faregate.providers.openai_compat import OpenAICompatible

COMPLETIONS_PATH = "/completions"


class TextCompletionClient(OpenAICompatible):
    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        if path != COMPLETIONS_PATH:
            call = path.strip("/").replace("/", " ")
            raise InvalidRequest(
                f"Model '{d.model_name}' is a text-completion model "
                f"(litellm_params.model text-completion-openai/...): it answers only "
                f"POST /v1/completions with a 'prompt', not {call} requests. Call "
                "/v1/completions, or ask for a chat model (GET /v1/models)",
                param="model", code="text_completion_only")
