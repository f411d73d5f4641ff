"""Mock upstreams (OpenAI-compatible and Anthropic) for the demo model, tests and the bench."""
