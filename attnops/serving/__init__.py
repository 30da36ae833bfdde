"""The inference service (FastAPI), canary routing and the inference log store."""
