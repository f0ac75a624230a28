"""`batray chat CHECKPOINT`: talk to a trained model in the terminal (multi-turn, streaming).

`/reset` starts a new conversation, `/quit` (or Ctrl-D) leaves. `--rerank N` samples N answers left to
right and prints the best by both directions (`batray.chat.ChatSession`).
"""

from __future__ import annotations

import argparse
import sys

from batray.chat import ChatSession
from batray.errors import BatrayError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batray chat", description="interactive terminal chat with a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/tiny/sft/final")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerank", type=int, default=1, metavar="N",
                   help="sample N answers and print the best by both directions (bidirectional reranking)")
    p.add_argument("--rerank-weight", type=float, default=None, metavar="W",
                   help="backward share of the rerank score in [0, 1] (default: rerank.weight's default, 0.5)")
    args = p.parse_args(argv)
    if args.rerank < 1:
        raise BatrayError(f"--rerank must be >= 1 (got {args.rerank})")
    if args.rerank_weight is None:
        from batray.config import RerankConfig

        args.rerank_weight = RerankConfig().weight
    if not 0 <= args.rerank_weight <= 1:
        raise BatrayError(f"--rerank-weight must be in [0, 1] (got {args.rerank_weight})")
    from batray.models.presets import is_checkpoint_dir

    if not is_checkpoint_dir(args.checkpoint):
        raise BatrayError(f"{args.checkpoint!r} is not a checkpoint folder (no config.json)")
    session = ChatSession(args.checkpoint, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                          rerank_n=args.rerank, rerank_weight=args.rerank_weight)
    interactive = sys.stdin.isatty()
    print(f"chatting with {args.checkpoint} (/reset: new conversation, /quit or Ctrl-D: leave)")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            session.reset()
            print("(new conversation)")
            continue
        if not interactive:
            print(f"you> {text}")
        sys.stdout.write("bat> ")
        session.reply(text)


if __name__ == "__main__":
    raise SystemExit(main())
