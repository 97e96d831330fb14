"""
The reference CLIP zero-shot detector: backbones, scoring, metrics; behind the [detector] extra.
"""
