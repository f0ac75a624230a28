"""The stage registry: `batray STAGE` and `batray run` resolve every input in one place.

Each case below once differed between the two (a stage run alone read other inputs than the same
stage inside the recipe); now both print the same plan, and the plan is what the stage runs with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batray.cli import main as cli
from batray.config import load_config
from batray.data.io import write_parquet
from batray.data.schemas import PREFERENCES
from batray.stages import resolve


def plan_lines(capsys, argv: list[str]) -> list[str]:
    """The printed plan of one stage (`--dry-run`), without the header and the stage's number."""
    assert cli(argv + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    return [lines[0].split(". ", 1)[1]] + [line.strip() for line in lines[1:]]


def same_plan_alone_and_in_run(capsys, stage: str, run_dir: Path, *overrides: str) -> list[str]:
    alone = plan_lines(capsys, [stage, "--run-dir", str(run_dir), *overrides])
    in_run = plan_lines(capsys, ["run", "--run-dir", str(run_dir), "--only", stage, *overrides])
    assert alone == in_run
    return alone


def test_rule_reward_ppo_needs_no_reward_model(tmp_path, capsys):
    lines = same_plan_alone_and_in_run(capsys, "ppo", tmp_path, "ppo.reward.kind=rule", "ppo.reward.target_text=abc")
    assert "<- reward_model (not used: ppo.reward.kind is rule)" in lines
    critic = next(line for line in lines if line.startswith("<- critic"))
    assert "the policy with a fresh value head (output of sft)" in critic
    plan = resolve(load_config(None, [f"run_dir={tmp_path}", "ppo.reward.kind=rule", "ppo.reward.target_text=abc"]), "ppo")
    assert plan.value("reward_model") is None and plan.value("critic") == plan.value("policy")


def test_label_pairs_and_prefs_ai_labels_from_the_config_are_honoured(tmp_path, capsys):
    pairs = tmp_path / "elsewhere" / "pairs.jsonl"
    lines = same_plan_alone_and_in_run(capsys, "label", tmp_path, f"label.pairs={pairs}")
    assert f"<- pairs       {pairs}  [label.pairs]" in lines
    ai = tmp_path / "elsewhere" / "ai.parquet"
    lines = same_plan_alone_and_in_run(capsys, "prefs", tmp_path, f"prefs.ai_labels={ai}")
    assert f"<- ai_labels    {ai}  [prefs.ai_labels]" in lines


def test_sft_starts_from_model_path_alone_and_in_run(tmp_path, capsys, tiny_checkpoint):
    over = (f"model.path={tiny_checkpoint}", "stages=[sft,pairs,label,prefs,reward,ppo,eval]")
    lines = same_plan_alone_and_in_run(capsys, "sft", tmp_path, *over)
    assert f"<- model  {tiny_checkpoint}  [model.path]" in lines
    # and the recipe's default: the latest model stage before sft (expand after grow)
    assert f"<- model  {tmp_path}/expand/final  [output of expand]" in same_plan_alone_and_in_run(capsys, "sft", tmp_path)


def test_pretraining_after_expand_continues_the_widened_model_and_sft_takes_it(tmp_path):
    def plan(stages: str, stage: str):
        return resolve(load_config(None, [f"run_dir={tmp_path}", f"stages={stages}"]), stage)

    # first in the recipe: from scratch; after grow and expand: the widened model, then SFT starts from it
    assert plan("[data,pretrain,grow,expand,sft]", "pretrain").value("init") is None
    continued = plan("[data,grow,expand,pretrain,sft]", "pretrain")
    assert continued.value("init") == f"{tmp_path}/expand/final"
    assert plan("[data,grow,expand,pretrain,sft]", "expand").value("src") == f"{tmp_path}/grow/final"
    assert plan("[data,grow,expand,pretrain,sft]", "sft").value("model") == f"{tmp_path}/pretrain/final"
    assert plan("[data,grow,pretrain,sft]", "pretrain").value("init") == f"{tmp_path}/grow/final"


def test_missing_inputs_are_one_line_naming_the_stage_to_run(tmp_path, capsys):
    assert cli(["sft", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"sft: model '{tmp_path}/expand/final' does not exist (output of expand); run `batray expand` first or " \
           "set sft.init_from" in err
    # a hub id is handed to transformers (tried where a hub is reachable), not refused as a missing folder
    plan = resolve(load_config(None, [f"run_dir={tmp_path}", "reward.init_from=org/some-model"]), "reward")
    assert plan.inputs["model"].origin == "reward.init_from" and plan.value("model") == "org/some-model"


def test_prefs_stage_runs_with_the_configured_ai_labels(tmp_path):
    """`batray run --only prefs` reads `prefs.ai_labels` from the config (it once read `<run>/label` only)."""
    from datetime import UTC, datetime

    row = {"pair_id": "p0", "prompt": "q", "response_a": "a", "response_b": "b", "d": -1, "acceptable_a": True,
           "acceptable_b": False, "helpfulness": "a_better", "source": "ai", "rater": "judge", "confidence": 0.9,
           "created_at": datetime.now(UTC)}
    ai = tmp_path / "mine" / "ai.parquet"
    write_parquet([row], str(ai), PREFERENCES)
    assert cli(["run", "--run-dir", str(tmp_path / "run"), "--only", "prefs", f"prefs.ai_labels={ai}", "--no-report"]) == 0
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())
    assert state["stages"]["prefs"]["inputs"]["ai_labels"] == str(ai)
    assert (tmp_path / "run" / "prefs" / "preferences.parquet").is_file()


def test_eval_results_of_an_absolute_model_path_land_under_the_run(tmp_path, capsys, ray_session, tiny_checkpoint):
    """An absolute `eval.models` path is labelled by its folder name, and its results are written under
    `<run_dir>/eval/<bench>/<label>/` (they once went into the user's checkpoint folder)."""
    from batray.data.demo import generate_demo

    bench = generate_demo(str(tmp_path / "demo"))["benchmarks"]
    over = [f"eval.models=[{tiny_checkpoint}]", f"eval.data={bench}", "eval.benchmarks=[ceval]", "eval.shots=[0]",
            "eval.limit=2", "eval.batch_size=2"]
    lines = same_plan_alone_and_in_run(capsys, "eval", tmp_path / "run", *over)
    assert f"<- models     {tiny_checkpoint}  [eval.models]" in lines
    before = sorted(p.name for p in Path(tiny_checkpoint).iterdir())
    assert cli(["eval", "--run-dir", str(tmp_path / "run"), *over]) == 0
    label = Path(tiny_checkpoint).name
    assert (tmp_path / "run" / "eval" / "ceval" / label / "da_0shot" / "results.json").is_file()
    assert sorted(p.name for p in Path(tiny_checkpoint).iterdir()) == before


@pytest.mark.parametrize("models,labels", [
    (["/ckpts/m", "runs/x/sft/final", "http://host:8000/v1"], ["m", "sft", "host_8000"]),
    (["/a/final", "/b/a", "/c/a/final"], ["a", "a-2", "a-3"]),
])
def test_model_labels_are_plain_unique_folder_names(models, labels):
    from batray.eval.run import model_labels

    assert list(model_labels(models)) == labels
