"""Checks on built folders (schema, integrity, grounding, leakage) and the reference detector."""
