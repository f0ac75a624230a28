"""Every stage of the BatGPT recipe as a registry entry: inputs (config keys and defaults), outputs, run.

Each `run` adapter reads its resolved inputs from the `StageCall` and makes one call into the library
function that does the work (those take every input explicitly and resolve nothing themselves).
"""

from __future__ import annotations

from pathlib import Path

from batray.checkpoint import is_complete
from batray.config import RecipeConfig, join_uri
from batray.stages.registry import (
    Input,
    Resolved,
    Stage,
    StageCall,
    demo_file,
    latest_model,
    output_of,
    produced_or_found,
    register,
)

MODELS_BEFORE_SFT = ("pretrain", "grow", "expand")
MODELS_AFTER_SFT = ("pretrain", "grow", "expand", "sft")


def _final(cfg: RecipeConfig, out_dir: str) -> dict[str, str]:
    return {"model": join_uri(out_dir, "final")}


def _file(name: str, filename: str):
    return lambda cfg, out_dir: {name: join_uri(out_dir, filename)}


CORPUS = Input("corpus", ("data.corpus",), demo_file("corpus.jsonl"))


# ---- data ------------------------------------------------------------------------------------------

def run_data(call: StageCall) -> dict:
    import json

    from batray.data.demo import generate_demo

    manifest = Path(call.plan.outputs["manifest"])
    if manifest.is_file():
        return {"skipped": "demo data already generated"}
    generate_demo(call.plan.outputs["data"], call.cfg.data.demo)
    return dict(json.loads(manifest.read_text()).get("counts", {}))


register(Stage(
    "data", "", "the bilingual demo world: corpus, SFT rows, prompts, benchmarks", (),
    lambda cfg, out_dir: {"data": out_dir, "manifest": join_uri(out_dir, "manifest.json")}, run_data,
    done=lambda outputs: Path(outputs["manifest"]).is_file(),
))


# ---- pretraining, expansion, Algorithm 1 -----------------------------------------------------------

def run_pretrain_stage(call: StageCall) -> dict:
    from batray.train.pretrain import run_pretrain

    run_pretrain(call.cfg, call.out_dir, corpus=call["corpus"], init_from=call["init"])
    return {}


def continued_or_scratch(cfg: RecipeConfig, consumer: str) -> Resolved:
    """Pretraining after grow or expand in `stages` continues the grown/widened model (Algorithm 1's "train
    again" after an expansion); pretraining first in the recipe starts from scratch."""
    order = list(cfg.stages)
    before = order[: order.index(consumer)] if consumer in order else []
    if any(s in before for s in ("grow", "expand")):
        return latest_model(("grow", "expand"))(cfg, consumer)
    return Resolved(None, f"from scratch ({cfg.model.preset})")


def _train_launch(train_cfg, *, actors: bool = False):
    """What a training stage needs of Ray: Ray Train, or in-process a cluster only for its other actors
    (grow's expansion shard writers)."""
    if train_cfg.scaling.launch == "ray_train":
        return "train"
    return "actors" if actors else None


register(Stage(
    "pretrain", "§3.1, Eq. 1", "bidirectional autoregressive pretraining on Ray Train",
    (CORPUS, Input("init", ("pretrain.init_from", "model.path"), continued_or_scratch, kind="checkpoint", optional=True)),
    _final, run_pretrain_stage,
    ray=lambda cfg: _train_launch(cfg.pretrain),
))


def run_grow_stage(call: StageCall) -> dict:
    from batray.expansion.grow import run_grow

    phases = run_grow(call.cfg, call.out_dir, corpus=call["corpus"], writer_cls=call.kit.get("shard_writer"))["phases"]
    keys = ("num_layers", "hidden_size", "steps", "final_loss", "expansion_deviation")
    return {p["phase"]: {k: p.get(k) for k in keys} for p in phases}


register(Stage(
    "grow", "Alg. 1", "train shallow, stack, train again, until full depth (and an optional width step)",
    (CORPUS,), _final, run_grow_stage,
    done=lambda outputs: is_complete(outputs["model"]) and (Path(outputs["model"]).parent / "summary.json").is_file(),
    ray=lambda cfg: _train_launch(cfg.pretrain, actors=True),
))


def run_expand_stage(call: StageCall) -> dict:
    from batray.expansion.run import run_expand

    report = run_expand(call.cfg, src=call["src"], dst=call.plan.outputs["model"], writer_cls=call.kit.get("shard_writer"))
    return {"source": report.get("source"), "target": report.get("target"), "logit_deviation": report.get("deviation")}


register(Stage(
    "expand", "§3.4, Eqs. 5-7, Alg. 1", "width (function-preserving) and depth (stacking) parameter expansion",
    (Input("src", ("expand.src",), latest_model(("pretrain", "grow")), kind="checkpoint"),),
    lambda cfg, out_dir: {"model": cfg.expand.dst or join_uri(out_dir, "final")}, run_expand_stage,
))


# ---- instruction tuning ----------------------------------------------------------------------------

def run_sft_stage(call: StageCall) -> dict:
    from batray.train.sft import run_sft

    run_sft(call.cfg, call.out_dir, init_from=call["model"], data=call["data"])
    return {}


register(Stage(
    "sft", "§3.2, Eq. 2", "instruction tuning on prompt/response pairs and dialogues",
    (Input("model", ("sft.init_from",), latest_model(MODELS_BEFORE_SFT), kind="checkpoint"),
     Input("data", ("sft.data", "data.sft"), demo_file("sft.jsonl"))),
    _final, run_sft_stage,
    ray=lambda cfg: _train_launch(cfg.sft),
))


# ---- preference data ---------------------------------------------------------------------------------

def _world_unused(cfg: RecipeConfig) -> str | None:
    return None if cfg.pairs.model_b == "world" else "pairs.model_b is not world"


def run_pairs_stage(call: StageCall) -> dict:
    from batray.feedback.pairs import run_pairs

    run_pairs(call.cfg, call.out_dir, model_a=call["model_a"], model_b=call.cfg.pairs.model_b,
              prompts=call["prompts"], world=call["world"], rollout_cls=call.kit.need("rollout"))
    return {}


register(Stage(
    "pairs", "§3.3", "two responses A and B per prompt from rollout engines",
    (Input("model_a", ("pairs.model_a",), latest_model(MODELS_AFTER_SFT), kind="checkpoint"),
     Input("prompts", ("pairs.prompts", "data.prompts"), demo_file("prompts.jsonl")),
     Input("world", (), demo_file("world.json"), unused=_world_unused)),
    _file("pairs", "pairs.parquet"), run_pairs_stage,
    ray="actors",
))


def _local_judge(cfg: RecipeConfig) -> str | None:
    return None if not cfg.label.endpoints else "label.endpoints are set"


def run_label_stage(call: StageCall) -> dict:
    from batray.feedback.ai_labels import judge_from_config, local_judge, run_label

    cfg, labeler = call.cfg, call.kit.need("labeler")
    if cfg.label.endpoints:
        judges = [judge_from_config(ep, cfg.label.num_labelers) for ep in cfg.label.endpoints]
        run_label(cfg, call.out_dir, pairs=call["pairs"], judges=judges, labeler_cls=labeler)
        return {}
    with local_judge(cfg, cfg.label.local_judge, sft_model=call["judge_model"], world=call["world"]) as judge:
        run_label(cfg, call.out_dir, pairs=call["pairs"], judges=[judge], labeler_cls=labeler)
    return {}


register(Stage(
    "label", "§3.3", "AI feedback: judges on OpenAI-compatible endpoints label the pairs",
    (Input("pairs", ("label.pairs",), output_of("pairs", "pairs")),
     Input("judges", ("label.endpoints",), lambda cfg, _: Resolved([f"local {cfg.label.local_judge} judge"],
                                                                   "label.local_judge"), kind="endpoint"),
     Input("judge_model", (), latest_model(MODELS_AFTER_SFT), kind="checkpoint",
           unused=lambda cfg: _local_judge(cfg) or (None if cfg.label.local_judge == "sft" else "label.local_judge is not sft")),
     Input("world", (), demo_file("world.json"),
           unused=lambda cfg: _local_judge(cfg) or (None if cfg.label.local_judge == "world" else "label.local_judge is not world"))),
    _file("ai_labels", "ai.parquet"), run_label_stage,
    ray="actors",
))


def run_prefs_stage(call: StageCall) -> dict:
    from batray.feedback.prefs import run_prefs

    run_prefs(call.cfg, call.out_dir, ai=call["ai_labels"], human=call["human_labels"])
    return {}


register(Stage(
    "prefs", "§3.3", "human and AI labels consolidated into d in {-1, 0, 1}",
    (Input("ai_labels", ("prefs.ai_labels",), produced_or_found("label", "ai_labels"), optional=True),
     Input("human_labels", ("prefs.human_labels",), lambda cfg, _: _human_labels(cfg), optional=True)),
    _file("preferences", "preferences.parquet"), run_prefs_stage,
))


def _human_labels(cfg: RecipeConfig) -> Resolved:
    path = join_uri(cfg.stage_dir("annotate"), "human.parquet")
    if Path(path).exists():
        return Resolved(path, "`batray annotate export` output")
    return Resolved(None, f"no human labels exported ({path})")


# ---- reward model, PPO ---------------------------------------------------------------------------------

def run_reward_stage(call: StageCall) -> dict:
    from batray.reward.stage import run_reward

    run_reward(call.cfg, call.out_dir, init_from=call["model"], data=call["data"])
    return {}


register(Stage(
    "reward", "§3.3, Eq. 3", "reward model trained with the hinge loss",
    (Input("model", ("reward.init_from",), latest_model(MODELS_AFTER_SFT), kind="checkpoint"),
     Input("data", ("reward.data",), output_of("prefs", "preferences"))),
    _final, run_reward_stage,
    ray=lambda cfg: _train_launch(cfg.reward),
))


def _rule_reward(cfg: RecipeConfig) -> str | None:
    return "ppo.reward.kind is rule" if cfg.ppo.reward.kind == "rule" else None


def _critic_default(cfg: RecipeConfig, consumer: str) -> Resolved:
    if cfg.ppo.reward.kind == "model":
        r = Resolved(cfg.ppo.reward_model, "ppo.reward_model") if cfg.ppo.reward_model else output_of("reward")(cfg, consumer)
        return Resolved(r.value, f"the reward model ({r.origin})", stage=r.stage)
    r = Resolved(cfg.ppo.policy_init, "ppo.policy_init") if cfg.ppo.policy_init else latest_model(MODELS_AFTER_SFT)(cfg, consumer)
    return Resolved(r.value, f"the policy with a fresh value head ({r.origin})", stage=r.stage)


def run_ppo_stage(call: StageCall) -> dict:
    from batray.ppo.driver import run_ppo

    run_ppo(call.cfg, call.out_dir, policy_init=call["policy"], reward_model=call["reward_model"],
            critic_init=call["critic"], prompts=call["prompts"], ptx_data=call["ptx_corpus"], kit=call.kit)
    return {}


register(Stage(
    "ppo", "§3.3, Eq. 4", "PPO with a KL penalty and a pretraining term on Ray actors",
    (Input("policy", ("ppo.policy_init",), latest_model(MODELS_AFTER_SFT), kind="checkpoint"),
     Input("reward_model", ("ppo.reward_model",), output_of("reward"), kind="checkpoint", unused=_rule_reward),
     Input("critic", ("ppo.critic_init",), _critic_default, kind="checkpoint"),
     Input("prompts", ("ppo.prompts", "data.prompts"), demo_file("prompts.jsonl")),
     Input("ptx_corpus", ("ppo.ptx_data", "data.corpus"), demo_file("corpus.jsonl"),
           unused=lambda cfg: "ppo.ptx_coef is 0" if cfg.ppo.ptx_coef == 0 else None)),
    _final, run_ppo_stage,
    ray="actors",
))


# ---- evaluation ---------------------------------------------------------------------------------------

def _eval_models(cfg: RecipeConfig, consumer: str) -> Resolved:
    found = [output_of(s)(cfg, consumer).value for s in ("sft", "ppo")
             if s in cfg.stages or is_complete(output_of(s)(cfg, consumer).value)]
    if found:
        return Resolved(found, "outputs of sft and ppo")
    r = latest_model(MODELS_AFTER_SFT)(cfg, consumer)
    return Resolved([r.value] if r.value else None, r.origin, stage=r.stage)


def run_eval_stage(call: StageCall) -> dict:
    from batray.eval.run import model_labels, run_eval

    result = run_eval(call.cfg, call.out_dir, models=model_labels(call["models"]), data_dir=call["benchmarks"],
                      scorer_cls=call.kit.need("eval_scorer"))
    return {"tables": result.get("tables")}


register(Stage(
    "eval", "§4, Tables 1-3", "CMMLU / C-Eval in the paper's table layout",
    (Input("models", ("eval.models",), _eval_models, kind="checkpoint"),
     Input("benchmarks", ("eval.data", "data.benchmarks"), demo_file("benchmarks"))),
    _file("tables", "tables.md"), run_eval_stage,
    ray="actors",
))
