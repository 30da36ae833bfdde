"""Monitors: drift, hallucination/groundedness, attention health, PII and the release gate.

Pure functions over data frames and arrays plus Evidently reports; no Prefect.
"""
