"""Evaluation: full-catalog ranking metrics and losses (no sampled metrics anywhere)."""
