"""Figures: one style for all of them (style.py), one module per subject."""
