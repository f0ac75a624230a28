"""Config: YAML + overrides -> validated schema; every bad input is one line naming the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batray.config import load_config
from batray.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_recipe_validates():
    cfg = load_config(ROOT / "configs/tiny.yaml")
    assert cfg.model.preset == "batgpt-tiny"
    assert cfg.pretrain.direction == "both"


def test_every_shipped_recipe_validates():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    recipes = [f for f in files if "kuberay" not in f.parts]
    assert recipes
    for f in recipes:
        load_config(f)


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["pretrain.optim.lr=3e-4", "ppo.colocate=false", "eval.shots=[0]"])
    assert cfg.pretrain.optim.lr == pytest.approx(3e-4)
    assert cfg.ppo.colocate is False
    assert cfg.eval.shots == [0]


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["pretrain.optimm.lr=1"], "pretrain.optimm"),
        (["pretrain.max_steps=abc"], "pretrain.max_steps"),
        (["pretrain.direction=sideways"], "pretrain.direction"),
        (["reward.tie_loss=band", "reward.tie_band=2.0"], "reward"),
        (["ppo.rollout_batch_size=10", "ppo.num_minibatches=3"], "ppo"),
        (["ray.num_cpus=1", "ppo.colocate=false", "pretrain.scaling.cpus_per_worker=0.5", "sft.scaling.cpus_per_worker=0.5", "reward.scaling.cpus_per_worker=0.5"], "ppo"),
        (["ray.num_cpus=1", "pretrain.scaling.num_workers=2"], "pretrain.scaling"),
        (["ray.num_cpus=2", "pretrain.scaling.cpus_per_worker=2"], "pretrain.scaling"),  # none left for Ray Data
        (["pretrain.optim.warmup_steps=500", "pretrain.max_steps=100"], "pretrain"),
    ],
)
def test_bad_values_name_the_key_path(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/tiny.yaml", overrides)
    message = str(err.value)
    assert "\n" not in message
    assert key in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def _batray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batray.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_validate_and_show():
    ok = _batray("config", "validate", "configs/tiny.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout

    typo = ROOT / "tests" / "_typo.yaml"
    typo.write_text("pretrain:\n  max_stepz: 3\n")
    try:
        bad = _batray("config", "validate", str(typo))
    finally:
        typo.unlink()
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrain.max_stepz" in lines[0]

    shown = _batray("config", "show", "configs/tiny.yaml", "sft.loss_on=all")
    assert shown.returncode == 0
    assert "loss_on: all" in shown.stdout


def test_cli_help_lists_stages():
    out = _batray("--help")
    for stage in ("pretrain", "expand", "grow", "sft", "pairs", "label", "annotate", "prefs", "reward", "ppo", "eval", "run"):
        assert f"  {stage}" in out.stdout


def test_local_paths_become_absolute_hub_names_and_uris_do_not(tmp_path, monkeypatch):
    """Ray Train V2 runs each worker in its own run folder, so a relative path must not reach a worker."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"text": "x"}\n')
    cfg = load_config(None, ["run_dir=runs/x", "data.corpus=corpus.jsonl", "model.path=org/some-model",
                             "ppo.prompts=s3://bucket/prompts.jsonl"])
    assert cfg.run_dir == str(tmp_path / "runs" / "x")
    assert cfg.data.corpus == str(tmp_path / "corpus.jsonl")
    assert cfg.model.path == "org/some-model"  # not a local path here: a hub name
    assert cfg.ppo.prompts == "s3://bucket/prompts.jsonl"
    assert cfg.stage_dir("sft") == str(tmp_path / "runs" / "x" / "sft")


def test_stage_overrides_may_follow_the_options():
    from jobs.common import resolve, stage_parser

    args = stage_parser("run", "x").parse_args(["sft.max_steps=3", "--run-dir", "/tmp/r", "ppo.steps=2", "seed=5"])
    cfg = resolve(args)
    assert (cfg.run_dir, cfg.sft.max_steps, cfg.ppo.steps, cfg.seed) == ("/tmp/r", 3, 2, 5)
