"""The `batray` command: `batray STAGE ...` dispatches to `jobs.<module>.main(argv)`.

`python -m jobs.<stage>` and `batray <stage>` are the same thing. A `BatrayError` (bad config, data or
request) is printed as one line and exits 2; anything else keeps its traceback (it is a bug).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under jobs/, one-line help). Order is the order of `batray --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "the whole BatGPT recipe, every stage chained (skips finished stages)"),
    "data": ("data", "data tools: `data demo OUT` builds the bilingual demo world"),
    "pretrain": ("pretrain", "bidirectional autoregressive pretraining (§3.1, Eq. 1) on Ray Train"),
    "expand": ("expand", "width (Eqs. 5-7) and depth (Alg. 1 stacking) parameter expansion"),
    "grow": ("grow", "Algorithm 1: train shallow, stack, train again, until full depth"),
    "sft": ("sft", "instruction tuning on prompt/response and dialogues (§3.2, Eq. 2)"),
    "pairs": ("pairs", "two responses A and B per prompt from rollout engines (§3.3)"),
    "label": ("label", "AI feedback: judges on OpenAI-compatible endpoints label pairs (§3.3)"),
    "annotate": ("annotate", "the human annotation web app (§3.3, Fig. 1): serve, add-user, export"),
    "prefs": ("prefs", "consolidate human and AI labels into d in {-1, 0, 1}"),
    "reward": ("reward", "reward model with the paper's hinge loss (Eq. 3) on Ray Train"),
    "ppo": ("ppo", "PPO with KL penalty and pretraining loss (Eq. 4) on Ray actors"),
    "eval": ("eval", "CMMLU / C-Eval evaluation in the paper's table layout (§4)"),
    "serve": ("serve", "an OpenAI-compatible HTTP server for a checkpoint"),
    "chat": ("chat", "interactive terminal chat with a checkpoint"),
    "experiment": ("experiment", "rerunnable experiments: reversal, hallucination"),
    "config": ("config", "config tools: validate FILE, show FILE [key=value ...]"),
    "model": ("model", "model tools: info PRESET_OR_PATH (exact parameter count, nothing allocated)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: batray COMMAND [--config FILE] [--run-dir DIR] [key.sub=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`batray COMMAND --help` describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from batray.errors import BatrayError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from batray import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"batray: unknown command {command!r}; `batray --help` lists them", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{COMMANDS[command][0]}")
    try:
        return int(module.main(rest) or 0)
    except BatrayError as e:
        print(f"batray {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"batray {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
