"""`batray sft` as a Ray Train job: from a checkpoint, on prompt/response and messages rows."""

from __future__ import annotations

import json

from batray.checkpoint import read_marker
from batray.config import load_config
from batray.metrics import read_metrics


def test_sft_job_trains_from_checkpoint(ray_session, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    from batray.train.sft import run_sft

    rows = []
    for i in range(40):
        rows.append({"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."})
        rows.append({"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"},
                                  {"role": "user", "content": "Again?"}, {"role": "assistant", "content": f"{i} again."}]})
    rows.append({"messages": [{"role": "assistant", "content": "no user turn"}]})  # rejected
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"run_dir={tmp_path}", f"data.sft={data}", "sft.seq_len=64", "sft.micro_batch_size=4",
                             "sft.max_steps=8", "sft.log_every=2", "sft.eval_every=8", "sft.ckpt_every=4",
                             "sft.optim.lr=3e-3", "sft.optim.warmup_steps=1", "data.held_out_fraction=0.1"])
    final = run_sft(cfg, str(tmp_path / "sft"), init_from=tiny_checkpoint, data=str(data))
    metrics = read_metrics(tmp_path / "sft")
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    assert metrics[-1]["loss_response"] < metrics[0]["loss_response"]
    assert "eval_loss_response" in metrics[-1]
    assert (tmp_path / "sft" / "rejected_sft.jsonl").read_text().count("\n") == 1
    meta = read_marker(final)
    assert meta["stage"] == "sft" and meta["parent"] == tiny_checkpoint and meta["loss_on"] == "last"
    AutoModelForCausalLM.from_pretrained(final)
