"""What `batray chat` talks to: a checkpoint loaded for a terminal conversation.

`load_chat_model` loads model and tokenizer together (`batray.models.loading`), on CUDA when there
is one, with the chat format's stop tokens; `conversation_ids` renders the conversation with the
model's chat template and its generation prompt, dropping the oldest turns while the answer would
not fit the context.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChatModel:
    model: object
    tokenizer: object
    stop_ids: list[int]  # the chat template's end of turn, EOS
    device: str
    max_context: int


def load_chat_model(checkpoint: str, *, chat_template: str | None = None, device: str = "auto") -> ChatModel:
    """A checkpoint folder (or hub id) ready to chat with. `chat_template`: as `model.chat_template`."""
    import torch

    from batray.models.chat import stop_token_ids
    from batray.models.loading import load_model_and_tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model_and_tokenizer(checkpoint, chat_template=chat_template, device=device)
    stops = stop_token_ids(tokenizer, model.generation_config)
    return ChatModel(model.eval(), tokenizer, stops, device, int(getattr(model.config, "max_position_embeddings", 2048)))


def conversation_ids(tokenizer, messages: list[dict], *, max_context: int, max_new_tokens: int) -> list[int]:
    """The conversation's generation prompt; the oldest user/assistant turns (never a leading system
    message) are removed from `messages` in place while it leaves no room for `max_new_tokens`."""
    from batray.models.chat import chat_prompt_ids

    while True:
        ids = chat_prompt_ids(tokenizer, messages)
        body_start = 1 if messages and messages[0]["role"] == "system" else 0
        if len(ids) + max_new_tokens <= max_context or len(messages) - body_start <= 1:
            return ids[-(max_context - max_new_tokens):]
        del messages[body_start:body_start + 2]
