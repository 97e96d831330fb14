"""Prompt templates and question banks (Jinja2 files, one per task family)."""
