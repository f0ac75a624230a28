"""Model presets, loading, the direction tokens and BatGPT's chat format."""
