"""Ray Data reads the same rows as the driver's validation pass, from every kind of source, and
normalises them to the same canonical rows (one test: Ray Data jobs are slow to start on CPU)."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batray.data.load import load_preferences, load_sft, normalized_dataset
from batray.data.sources import iter_rows, ray_dataset


def _canon(rows) -> list[str]:
    """Rows as sorted JSON without null fields (Ray unifies the columns of different files with nulls)."""
    return sorted(json.dumps({k: v for k, v in r.items() if v is not None}, sort_keys=True, ensure_ascii=False)
                  for r in rows)


def _mixed_folder(root):
    folder = root / "mixed"
    (folder / "lang=en").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"instruction": "i", "input": "x", "output": "o"}]),
                   folder / "lang=en" / "b.parquet")
    lines = [json.dumps({"prompt": "p1", "completion": "c1"}), "{broken", json.dumps({"nothing": 1}),
             json.dumps({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "维"}]},
                        ensure_ascii=False)]
    # gzip'd, starting with a UTF-8 byte order mark: both readers decompress and strip it
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode()))
    (folder / "d.json").write_text(json.dumps([{"prompt": "p2", "response": "r2"}, 5]))
    (folder / "e.csv").write_text('instruction,output\n"two\nlines",o3\nbad,row,here\n', encoding="utf-8")
    return folder


def test_ray_data_matches_the_validation_pass(ray_session, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    folder = _mixed_folder(tmp_path)
    valid = [row for _, row in iter_rows(str(folder)) if "__invalid__" not in row]
    assert len(valid) == 7  # 8 records less the broken line, the bad CSV row and the array's 5
    assert _canon(ray_dataset(str(folder)).take_all()) == _canon(valid)

    convos, report = load_sft(str(folder))
    assert len(convos) == 6 and len(report.rejected) == 4
    got = [r["messages"] for r in normalized_dataset(str(folder), "sft").take_all()]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, convos))

    # datasets objects: a save_to_disk DatasetDict's split, and a hub-layout folder through load_dataset
    rows = [{"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
            {"prompt": "q2", "chosen": "yes", "rejected": "no"}]
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "p", "response": "r"}]),
                          "train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    prefs, _ = load_preferences(str(tmp_path / "dd"))
    ray_prefs = normalized_dataset(str(tmp_path / "dd"), "preferences").take_all()
    assert _canon(ray_prefs) == _canon(prefs) and {p["pair_id"] for p in ray_prefs} == {p["pair_id"] for p in prefs}
    repo = tmp_path / "org" / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text(json.dumps({"prompt": "hub p", "response": "hub r"}) + "\n")
    (repo / "data" / "test.jsonl").write_text(json.dumps({"prompt": "t", "response": "t"}) + "\n")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    got = normalized_dataset({"name": str(repo), "split": "train"}, "sft").take_all()
    assert [r["messages"] for r in got] == load_sft({"name": str(repo)})[0] == [
        [{"role": "user", "content": "hub p"}, {"role": "assistant", "content": "hub r"}]]
