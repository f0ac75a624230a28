"""Entrypoints and orchestration: one module per stage; `batray STAGE` and `python -m jobs.STAGE` agree."""
