"""`batray expand` as a user runs it: Ray tasks per output shard, report printed and saved, rerun skips,
bad requests exit 2 with one line before Ray starts or anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from batray.cli import main as cli


def test_expand_cli_on_ray(ray_session, tiny_checkpoint, tmp_path, capsys):
    dst = tmp_path / "wide_deep"
    argv = ["expand", tiny_checkpoint, str(dst), "--hidden-size", "128", "--num-heads", "8", "--num-kv-heads", "4",
            "--num-layers", "8", "--max-shard-mb", "0.25", f"--run-dir={tmp_path / 'run'}"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "hidden_size 64->128" in out and "num_layers 4->8" in out and "logit deviation max" in out
    report = json.loads((dst / "expansion.json").read_text())
    assert report["shards"] > 2 and report["deviation"]["max_abs"] < 1e-4
    # tokenizer files travel with the weights, so the folder is a complete HF checkpoint
    assert (dst / "tokenizer.json").is_file() and (dst / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert model.config.num_hidden_layers == 8 and model.config.hidden_size == 128
    mtime = (dst / "expansion.json").stat().st_mtime_ns
    assert cli(argv) == 0  # the same request again: finished output is kept, not rewritten
    assert (dst / "expansion.json").stat().st_mtime_ns == mtime


def test_expand_cli_bad_request_is_one_line(tiny_checkpoint, tmp_path, capsys):
    dst = tmp_path / "never"
    assert cli(["expand", tiny_checkpoint, str(dst), "--num-heads", "6", "--num-kv-heads", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_heads (6) must be divisible by num_kv_heads (4)" in err
    assert not dst.exists() and not Path(str(dst) + ".tmp").exists()
    assert cli(["expand", tiny_checkpoint, str(dst), "--method", "fpi", "--hidden-size", "32"]) == 2
    assert "cannot shrink" in capsys.readouterr().err


def test_a_one_shard_expansion_starts_no_ray(tiny_checkpoint, tmp_path, monkeypatch):
    """One output shard has nothing to share among writers: `expand` writes it in its own process, without
    starting (or joining) a Ray cluster, and the output is the one the actor pool writes."""
    from batray.config import load_config
    from batray.expansion import run as expand_run
    from actors.shard_writer import ShardWriter

    def no_ray(cfg):
        raise AssertionError("a one-shard expansion started Ray")

    monkeypatch.setattr(expand_run, "init_ray", no_ray)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "expand.hidden_size=128", "expand.num_heads=8",
                             "expand.num_kv_heads=4"])
    report = expand_run.run_expand(cfg, src=tiny_checkpoint, dst=str(tmp_path / "wide"), writer_cls=ShardWriter)
    assert report["shards"] == 1 and report["deviation"]["max_abs"] < 1e-4
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "wide").config.hidden_size == 128


def test_many_shards_on_a_small_machine_with_no_cluster_are_written_in_process(tiny_checkpoint, tmp_path, monkeypatch):
    """With `num_writers` unset, no cluster to join and 2 CPUs, starting a local cluster costs more than a
    second writer gains: `expand` writes every shard itself. With more CPUs it starts the writer pool."""
    import ray

    from batray.config import load_config
    from batray.expansion import run as expand_run

    from actors.shard_writer import ShardWriter

    class Started(Exception):
        pass

    def no_ray(cfg):
        raise Started

    monkeypatch.setattr(expand_run, "init_ray", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "expand.hidden_size=128", "expand.num_heads=8",
                             "expand.num_kv_heads=4", "expand.max_shard_mb=0.25"])
    monkeypatch.setattr(expand_run.os, "cpu_count", lambda: 2)
    report = expand_run.run_expand(cfg, src=tiny_checkpoint, dst=str(tmp_path / "wide"), writer_cls=ShardWriter)
    assert report["shards"] > 2 and report["deviation"]["max_abs"] < 1e-4
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "wide").config.hidden_size == 128

    monkeypatch.setattr(expand_run.os, "cpu_count", lambda: 16)
    assert not expand_run.writes_in_process(cfg, 3) and expand_run.writes_in_process(cfg, 1)
    try:
        expand_run.run_expand(cfg, src=tiny_checkpoint, dst=str(tmp_path / "wide16"), writer_cls=ShardWriter)
    except Started:
        pass
    else:
        raise AssertionError("16 CPUs and no cluster: the writer pool should have started a local cluster")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a cluster to join: its writers, whatever the CPUs
    monkeypatch.setattr(expand_run.os, "cpu_count", lambda: 2)
    assert not expand_run.writes_in_process(cfg, 3)
