"""The matching service: FastAPI app (app), the library behind it (service), batching, API keys."""
