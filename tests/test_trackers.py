"""Trackers: after a real SFT stage on 2 workers, wandb (offline) and MLflow (local file store) hold the
run's config and every metrics.jsonl row exactly once; a missing tracker package is one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from batray.config import load_config
from batray.errors import ConfigError
from batray.metrics import read_metrics


def sft_rows(path: Path) -> Path:
    rows = [{"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."} for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_sft_overrides(tmp_path: Path, data: Path, steps: int = 4) -> list[str]:
    return [f"run_dir={tmp_path}", f"data.sft={data}", "sft.seq_len=48", "sft.micro_batch_size=4",
            f"sft.max_steps={steps}", "sft.log_every=2", f"sft.eval_every={steps}", f"sft.ckpt_every={steps}",
            "sft.optim.lr=3e-3", "data.held_out_fraction=0.1"]


def wandb_records(path: Path) -> list:
    """The protobuf records of a `.wandb` transaction log (wandb 0.2x has no Python reader): LevelDB's
    log format, 32 KiB blocks of chunks with a 7-byte header (crc32, length, type), after a 7-byte
    ':W&B' file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
        elif kind == 0 and length == 0:
            break  # zero fill: the end of what was written
    return out


def test_wandb_and_mlflow_get_config_and_each_row_once_with_two_workers(ray_session, tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
    from mlflow.tracking import MlflowClient

    from batray.train.sft import run_sft

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(None, tiny_sft_overrides(tmp_path, sft_rows(tmp_path / "sft.jsonl")) + [
        "sft.scaling.num_workers=2", "logging.report_to=[tensorboard,wandb,mlflow]", "logging.project=obs-test",
        "logging.group=recipe-1", "logging.tags=[tiny]", f"logging.mlflow_tracking_uri={uri}"])
    run_sft(cfg, str(tmp_path / "sft"), init_from=tiny_checkpoint, data=cfg.data.sft)

    rows = read_metrics(tmp_path / "sft")
    assert [r["step"] for r in rows] == [2, 4]
    assert list((tmp_path / "sft" / "tb").glob("events.out.tfevents.*"))  # TensorBoard still written

    # MLflow: one stage run (a child of the group's parent run), config as params, each row once
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("obs-test")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`batray.stage` = 'sft'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == f"{tmp_path.name}-sft"
    assert run.data.params["sft.max_steps"] == "4" and run.data.params["sft.scaling.num_workers"] == "2"
    assert run.data.tags["batray.group"] == "recipe-1"
    assert {"batray.tag.sft", f"batray.tag.config:{cfg.digest()}", "batray.tag.tiny"} <= set(run.data.tags)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "recipe-1"
    for key in ("loss_response", "tokens_per_s", "eval_loss_response"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r[key])) for r in rows if key in r]

    # wandb: one offline run with the group, tags and config; one history record per row
    (run_dir,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.run_group == "recipe-1" and run_record.display_name == f"{tmp_path.name}-sft"
    assert {"sft", f"config:{cfg.digest()}", "tiny"} <= set(run_record.tags)
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["sft"]["max_steps"] == 4 and config["logging"]["project"] == "obs-test"
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [2, 4]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item} for h in history]
    assert [h["loss_response"] for h in history] == [pytest.approx(r["loss_response"]) for r in rows]
    assert json.loads((tmp_path / "sft" / "trackers.json").read_text())["wandb"] == run_record.run_id


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_is_one_line_naming_the_extra_before_any_work(tracker, tmp_path, monkeypatch):
    from batray.stages import run_stage

    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed
    cfg = load_config(None, [f"run_dir={tmp_path}", f"logging.report_to=[{tracker}]"])
    with pytest.raises(ConfigError) as e:
        run_stage(cfg, "sft", kit=None)
    message = str(e.value)
    assert "\n" not in message and f"pip install 'batray[{tracker}]'" in message
    assert not (tmp_path / "sft").exists() and not (tmp_path / "data").exists()


def test_batray_run_puts_its_stages_in_one_group(tmp_path):
    """`batray run` names the group once (run_dir name + config hash) unless logging.group is set."""
    from batray.trackers import TrackerSpec, in_run_group

    cfg = load_config(None, [f"run_dir={tmp_path}"])
    grouped = in_run_group(cfg)
    assert grouped.digest() == cfg.digest()  # where metrics go is not part of the config hash
    specs = [TrackerSpec.of(grouped, stage, str(tmp_path / stage)) for stage in ("sft", "reward", "ppo")]
    assert {s.group for s in specs} == {f"{tmp_path.name}-{cfg.digest()[:8]}"}
    assert [s.run_name for s in specs] == [f"{tmp_path.name}-{s}" for s in ("sft", "reward", "ppo")]
    chosen = load_config(None, [f"run_dir={tmp_path}", "logging.group=mine"])
    assert in_run_group(chosen).logging.group == "mine"
