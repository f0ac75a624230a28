"""Labeler actors: hold the judge templates and label chunks of pairs against one endpoint.

An async actor (its method is a coroutine), so one labeler keeps many requests in flight; the
requests-in-flight limit is the endpoint's `concurrency` shared across the pool by the job. All the
logic is in `batray.feedback.labeling`.
"""

from __future__ import annotations


class LabelerActor:
    def __init__(self, templates_dir: str | None = None):
        from batray.feedback.templates import load_templates

        self.templates = load_templates(templates_dir)

    def ready(self) -> bool:
        return True

    async def label(self, pairs: list[dict], settings, api_key, *, both_orders: bool = True,
                    on_disagreement: str = "tie", max_requests: int | None = None) -> dict:
        """Label `pairs` against one endpoint (`EndpointSettings`, its key a `Secret`); returns
        {"rows", "failures", "stats"} (see `batray.feedback.labeling`)."""
        from batray.feedback.labeling import label_pairs

        res = await label_pairs(pairs, settings, api_key, self.templates, both_orders=both_orders,
                                on_disagreement=on_disagreement, max_requests=max_requests)
        return {"rows": res.rows, "failures": res.failures, "stats": res.stats}
