"""Deterministic demo data: synthetic customer-support tickets with drift scenarios."""
