"""batray: the BatGPT training recipe on Ray.

The library layer: config schemas, models, tokenizer, data, objectives (every equation of the paper
as a pure torch function), expansion, evaluation, feedback and serving. Nothing here imports Ray
actor classes, `actors/` or `jobs/`.
"""

__version__ = "0.1.0"
