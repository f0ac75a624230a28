"""`batray serve`: an OpenAI-compatible HTTP server for a batray / Hugging Face checkpoint.

- `protocol`: request bodies and error envelopes; `generation`: the batched decode loop (HF);
  `vllm_backend`: the same contract on vLLM; `batching`: the asyncio queue feeding one loop;
  `app`: the FastAPI routes; `server`: foreground and background (`start_server`) runners.
"""

from batray.serve.app import ServedModel, create_app, load_served_model
from batray.serve.server import ServerHandle, run_server, start_server

__all__ = ["ServedModel", "ServerHandle", "create_app", "load_served_model", "run_server", "start_server"]
