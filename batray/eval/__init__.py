"""CMMLU and C-Eval evaluation (§4, Tables 1-3).

- `subjects`: the shipped subject tables (names, Chinese names, categories, C-Eval Hard).
- `data`: readers of the official CSV layouts, with rejected rows counted.
- `prompts`: the prompts exactly as the benchmarks' own evaluation code builds them, shot dropping.
- `extract`: the ordered answer-extraction patterns for generated (`cot`) answers.
- `scoring`: next-token letter scoring (`da`), generation (`cot`), local model or OpenAI endpoint.
- `modes`: the registry of scoring modes (`da`, `cot`; `rerank` registers itself from `rerank.py`).
- `tasks`: benchmark folder -> scoring requests (prompts fitted to the model's context) -> rows.
- `results`: per-subject, per-category and average accuracy as the official code computes them.
- `tables`: Markdown tables in the paper's layouts.
"""
