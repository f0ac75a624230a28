"""The eval scorer actor: holds one model (or endpoint client) and scores batches of requests.

No evaluation logic here: the backend (`batray.eval.scoring`) and the mode
(`batray.eval.modes`) do the work; `batray.eval.run` places N of these with an `ActorGroup` and feeds
them batches.
"""

from __future__ import annotations


class EvalScorer:
    def __init__(self, model: str, *, batch_size: int = 8, chat: bool = False, served_model: str | None = None,
                 api_key=None, device: str | None = None, rank: int = 0, world_size: int = 1):
        import torch

        from batray.eval.scoring import make_backend

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rank = rank  # api_key: a batray.feedback.client.Secret (an endpoint's key), never logged
        self.backend = make_backend(model, device=device, batch_size=batch_size, chat=chat,
                                    served_model=served_model, api_key=api_key.get() if api_key is not None else None)

    def describe(self) -> dict:
        return {"rank": self.rank, "model": self.backend.name, "context": self.backend.context}

    def predict(self, mode: str, benchmark: str, requests: list, options: dict | None = None) -> list[dict]:
        from batray.eval.modes import get_mode

        return get_mode(mode).predict(self.backend, requests, benchmark, **(options or {}))

    def truncated(self) -> int:
        return self.backend.truncated
