"""What clients send and receive: OpenAI request parsing, the Anthropic dialect, JSON limits."""
