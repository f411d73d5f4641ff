"""HTTP edge: the OpenAI routes (raw ASGI, the hot path) and the admin routes (FastAPI)."""
