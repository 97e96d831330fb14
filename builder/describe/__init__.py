"""The describe stage: a grounded Description per sample, offline from templates or from an LLM."""
