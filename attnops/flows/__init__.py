"""Prefect flows and the `attnops` CLI: orchestration only, no ML logic."""
