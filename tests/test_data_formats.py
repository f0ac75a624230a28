"""Every data layout and source batray reads, normalised to its canonical rows (no Ray here; the Ray
Data reading of the same sources is in test_data_sources_ray.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batray.data.formats import LAYOUTS, FormatError, Keys, normalize
from batray.data.io import write_rejected
from batray.data.load import load_prompts, load_sft
from batray.data.sft import SampleError, normalize_messages
from batray.data.sources import iter_rows, resolve
from batray.errors import ConfigError, DataError
from batray.reward.data import load_triples

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _one(kind, row, keys=None):
    result = normalize(kind, row, keys)
    assert not result.errors and len(result.rows) == 1, result
    return result.layout, result.rows[0]


# ---- SFT layouts -> messages ------------------------------------------------------------------------


def test_sft_messages_and_sharegpt():
    convo = [S("be brief"), U("q1"), A("a1"), U("q2"), A("a2")]
    assert _one("sft", {"messages": convo}) == ("messages", {"messages": convo})
    sharegpt = {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "q1"},
                                  {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                                  {"from": "gpt", "value": "a2"}], "id": "x"}
    assert _one("sft", sharegpt) == ("sharegpt", {"messages": convo})
    with pytest.raises(FormatError, match="sharegpt: turns must alternate"):
        normalize("sft", {"conversations": [{"from": "gpt", "value": "hi"}]})
    with pytest.raises(FormatError, match="role 'observation' not in"):
        normalize("sft", {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "x"}]})


def test_sft_prompt_response_and_trl_prompt_completion():
    assert _one("sft", {"prompt": "Hi", "response": "Hello"}) == ("prompt_response", {"messages": [U("Hi"), A("Hello")]})
    assert _one("sft", {"prompt": "Hi", "completion": "Hello"}) == ("prompt_completion",
                                                                     {"messages": [U("Hi"), A("Hello")]})
    # TRL's conversational prompt-completion: message lists (content parts of text are joined)
    row = {"prompt": [S("s"), {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
           "completion": [A("Hello")]}
    assert _one("sft", row) == ("prompt_completion", {"messages": [S("s"), U("Hi there"), A("Hello")]})
    with pytest.raises(FormatError, match="prompt_completion: turns must alternate user/assistant; turn 1 is 'user'"):
        normalize("sft", {"prompt": [U("a")], "completion": [U("b")]})


def test_sft_alpaca_with_and_without_input():
    assert _one("sft", {"instruction": "Translate to French.", "input": "cat", "output": "chat"}) == (
        "alpaca", {"messages": [U("Translate to French.\n\ncat"), A("chat")]})
    assert _one("sft", {"instruction": "Say hi.", "input": "", "output": "hi", "system": "be kind"}) == (
        "alpaca", {"messages": [S("be kind"), U("Say hi."), A("hi")]})
    assert _one("sft", {"instruction": "Say hi.", "output": "hi"})[1] == {"messages": [U("Say hi."), A("hi")]}


def test_sft_self_instruct_one_example_per_instance_bad_ones_counted(tmp_path):
    rows = [{"id": "t0", "instruction": "Antonym?", "instances": [{"input": "hot", "output": "cold"},
                                                                  {"input": "up", "output": "down"},
                                                                  {"input": "big"}]},
            {"id": "t1", "instruction": "Name a color.", "instances": [{"input": "", "output": "blue"}]}]
    convos, report = load_sft(_jsonl(tmp_path / "seed.jsonl", rows))
    assert convos == [[U("Antonym?\n\nhot"), A("cold")], [U("Antonym?\n\nup"), A("down")],
                      [U("Name a color."), A("blue")]]
    assert (report.rows_read, report.total, report.accepted) == (2, 4, 3)
    assert report.rejected[0]["where"].endswith("seed.jsonl:1")
    assert "self_instruct: instances[2] needs a string output" in report.rejected[0]["reason"]
    assert "2 rows (4 examples; self_instruct: 3), 3 accepted, 1 rejected" in report.summary("sft")
    with pytest.raises(SampleError, match="makes 2 examples"):
        normalize_messages(rows[0] | {"instances": rows[0]["instances"][:2]})


def test_unrecognised_rows_name_their_columns_and_what_would_work():
    with pytest.raises(FormatError) as e:
        normalize("sft", {"question": "q", "answer": "a"}, Keys("sft"))
    msg = str(e.value)
    assert "columns [question, answer]" in msg
    for layout in LAYOUTS["sft"]:
        assert f"{layout.name} ({'+'.join(layout.columns)})" in msg
    assert "sft.input_key" in msg and "sft.output_key" in msg and "sft.messages_key" in msg
    with pytest.raises(FormatError, match=r"unrecognised preferences row .*reward.chosen_key"):
        normalize("preferences", {"good": "x", "bad": "y"}, Keys("reward"))


def test_column_keys_rename_and_force_the_layout():
    keys = Keys("sft", input="question", output="answer")
    assert _one("sft", {"question": "q", "answer": "a", "messages": "ignored"}, keys) == (
        "prompt_response", {"messages": [U("q"), A("a")]})
    assert _one("sft", {"dialog": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                Keys("sft", messages="dialog")) == ("messages", {"messages": [U("q"), A("a")]})
    with pytest.raises(FormatError, match=r"no column 'question' \(sft.input_key\); the row has \[prompt, response\]"):
        normalize("sft", {"prompt": "q", "response": "a"}, keys)
    # preferences and prompts
    _, pref = _one("preferences", {"q": "Which?", "good": "this", "bad": "that"},
                   Keys("reward", prompt="q", chosen="good", rejected="bad"))
    assert (pref["context"], pref["response_a"], pref["response_b"], pref["d"]) == ([U("Which?")], "this", "that", -1)
    assert _one("prompts", {"text": "Hello?", "prompt": "not this"}, Keys("ppo", prompt="text"))[1]["prompt"] == "Hello?"


def test_column_keys_come_from_the_stage_configs():
    from batray.config import load_config

    cfg = load_config(None, ["sft.input_key=question", "sft.output_key=answer", "reward.chosen_key=good",
                             "ppo.prompt_key=text", "pairs.messages_key=dialog"])
    assert Keys.of("sft", cfg.sft) == Keys("sft", input="question", output="answer")
    assert Keys.of("reward", cfg.reward) == Keys("reward", chosen="good")
    assert Keys.of("ppo", cfg.ppo) == Keys("ppo", prompt="text")
    assert Keys.of("pairs", cfg.pairs) == Keys("pairs", messages="dialog")
    with pytest.raises(ConfigError, match="sft.chosen_key: unknown key"):
        load_config(None, ["sft.chosen_key=x"])


# ---- preference layouts -> Triple ---------------------------------------------------------------------


def test_preference_layouts(tmp_path):
    convo_c = [U("What is 2+2?"), A("4")]
    convo_r = [U("What is 2+2?"), A("5")]
    rows = [
        # batray's preferences schema
        {"pair_id": "p0", "prompt": "q0", "response_a": "a", "response_b": "b", "d": 1},
        # TRL explicit prompt, strings
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        # TRL explicit prompt, message lists
        {"prompt": [S("sys"), U("q2")], "chosen": [A("good")], "rejected": [A("bad")]},
        # TRL implicit prompt: the common prefix of two conversations
        {"chosen": [U("hi"), A("hello"), U("q3"), A("good")], "rejected": [U("hi"), A("hello"), U("q3"), A("bad")]},
        # UltraFeedback binarized: prompt repeated in the conversations, scores; equal scores are a tie
        {"prompt": "What is 2+2?", "prompt_id": "uf1", "chosen": convo_c, "rejected": convo_r,
         "score_chosen": 9.0, "score_rejected": 3.0, "messages": convo_c},
        {"prompt": "What is 2+2?", "prompt_id": "uf2", "chosen": convo_c, "rejected": convo_r,
         "score_chosen": 5.0, "score_rejected": 5.0},
        {"prompt": "What is 2+2?", "chosen": convo_c, "rejected": convo_r, "score_chosen": 2, "score_rejected": 5},
        # HH-RLHF text
        {"chosen": "\n\nHuman: q4\n\nAssistant: good", "rejected": "\n\nHuman: q4\n\nAssistant: bad"},
        # implicit prompt whose conversations differ early
        {"chosen": [U("x"), A("good")], "rejected": [U("y"), A("bad")]},
    ]
    triples, report, layout = load_triples(_jsonl(tmp_path / "prefs.jsonl", rows))
    got = [(t.context, t.response_a, t.response_b, t.d) for t in triples]
    assert got == [
        ([U("q0")], "a", "b", 1),
        ([U("q1")], "good", "bad", -1),
        ([S("sys"), U("q2")], "good", "bad", -1),
        ([U("hi"), A("hello"), U("q3")], "good", "bad", -1),
        ([U("What is 2+2?")], "4", "5", -1),
        ([U("What is 2+2?")], "4", "5", 0),
        ([U("q4")], "good", "bad", -1),
    ]
    assert report.layouts == {"preferences": 1, "chosen_rejected": 3, "ultrafeedback": 2, "hh_rlhf": 1}
    assert layout.split("+")[0] == "chosen_rejected" and len(layout.split("+")) == 4
    assert [t.pair_id for t in triples][:1] == ["p0"] and triples[4].pair_id == "uf1"
    ids = [t.pair_id for t in triples]
    assert len(set(ids)) == len(ids) and all(i.startswith("pair-") for i in ids[1:4])
    reasons = [(r["where"].rsplit(":", 1)[1], r["reason"]) for r in report.rejected]
    assert reasons == [("7", "ultrafeedback: score_chosen 2 is below score_rejected 5"),
                       ("9", "chosen_rejected: chosen and rejected differ before their last assistant turn")]
    # the content names a pair without an id: the same pair reads with the same id in another order
    again, _, _ = load_triples(_jsonl(tmp_path / "reversed.jsonl", rows[::-1]))
    assert {t.pair_id for t in again} == set(ids)


# ---- prompts: prompt strings/lists, the first user turn of any SFT layout -----------------------------


def test_prompt_layouts(tmp_path):
    rows = [
        {"id": "a", "prompt": "Hello?"},
        {"prompt": [S("be brief"), U("Why?")]},
        {"messages": [S("s"), U("first"), A("x"), U("second"), A("y")]},
        {"conversations": [{"from": "human", "value": "shared"}, {"from": "gpt", "value": "x"}]},
        {"instruction": "Translate.", "input": "cat", "output": "chat"},
        {"id": "t", "instruction": "Antonym?", "instances": [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]},
        {"prompt": "q", "response": "r"},
        {"prompt": "   "},
        {"prompt": [U("q"), A("a")]},
    ]
    prompts, report = load_prompts(_jsonl(tmp_path / "p.jsonl", rows))
    assert [(p["messages"], p["id"]) for p in prompts] == [
        ([U("Hello?")], "a"), ([S("be brief"), U("Why?")], None), ([S("s"), U("first")], None),
        ([U("shared")], None), ([U("Translate.\n\ncat")], None), ([U("Antonym?\n\nhot")], "t#0"),
        ([U("Antonym?\n\nup")], "t#1"), ([U("q")], None)]
    assert [p["prompt"] for p in prompts][:3] == ["Hello?", "Why?", "first"]
    assert [r["reason"] for r in report.rejected] == ["prompt: the prompt is empty",
                                                      "prompt: the prompt must end with the user's turn"]
    single, report = load_prompts(str(tmp_path / "p.jsonl"), single_turn=True)
    assert len(single) == 6 and sum("one user turn" in r["reason"] for r in report.rejected) == 2


# ---- sources: files, folders, save_to_disk, hub layout -------------------------------------------------


def test_csv_json_array_and_bad_rows_written_aside(tmp_path):
    (tmp_path / "sft.csv").write_text('instruction,input,output\n"Write\na haiku.",,"Old pond"\nSay hi.,,hi,extra\n'
                                      'Add.,1+1,2\n', encoding="utf-8")
    convos, report = load_sft(str(tmp_path / "sft.csv"))
    assert convos == [[U("Write\na haiku."), A("Old pond")], [U("Add.\n\n1+1"), A("2")]]
    assert len(report.rejected) == 1 and report.rejected[0]["where"] == f"{tmp_path}/sft.csv:4"  # its line: row 1 spans two
    assert "CSV row with 4 fields, expected 3" in report.rejected[0]["reason"]

    (tmp_path / "arr.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}, 7, {"x": 1}], indent=2))
    convos, report = load_sft(str(tmp_path / "arr.json"))
    assert convos == [[U("p"), A("c")]]
    assert [(r["where"].rsplit(":", 1)[1], r["reason"].split(" (")[0]) for r in report.rejected] == [
        ("row 1", "not a JSON object"), ("row 2", "unrecognised sft row")]

    # a JSON array that does not parse is read as lines: each reported with its text, nothing lost
    (tmp_path / "broken.json").write_text('[\n{"prompt": "p", "completion": "c"},\n', encoding="utf-8")
    convos, report = load_sft(str(tmp_path / "broken.json"))
    assert convos == [] and [r["row"] for r in report.rejected] == ["[", '{"prompt": "p", "completion": "c"},']

    lines = [json.dumps({"messages": [U("q"), A("a")]}), "{broken", json.dumps({"prompt": "p"}), "",
             json.dumps({"prompt": "p", "response": "r"})]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    convos, report = load_sft(str(tmp_path / "bad.jsonl"))
    assert len(convos) == 2 and (report.total, report.accepted) == (4, 2)
    assert [r["where"] for r in report.rejected] == [f"{tmp_path}/bad.jsonl:2", f"{tmp_path}/bad.jsonl:3"]
    out = write_rejected(report, str(tmp_path / "rejected" / "sft.jsonl"))
    written = [json.loads(x) for x in Path(out).read_text(encoding="utf-8").splitlines()]
    assert [w["row"] for w in written] == ["{broken", {"prompt": "p"}]
    assert written[0]["reason"].startswith("invalid JSON") and written[1]["where"].endswith("bad.jsonl:3")


def test_folder_of_mixed_parquet_files(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "part=1").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"messages": [U("q"), A("a")]}]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"instruction": "i", "input": None, "output": "o"},
                                         {"instruction": "i2", "input": "x", "output": "o2"}]),
                   folder / "part=1" / "b.parquet")
    pq.write_table(pa.Table.from_pylist([{"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}]),
                   folder / "c.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_text("not parquet")
    convos, report = load_sft(str(folder))
    assert convos == [[U("q"), A("a")], [U("h"), A("g")], [U("i"), A("o")], [U("i2\n\nx"), A("o2")]]
    assert report.layouts == {"messages": 1, "sharegpt": 1, "alpaca": 2} and not report.rejected
    assert [w for w, _ in iter_rows(str(folder))][-1] == f"{folder}/part=1/b.parquet:row 1"


def test_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    convos, report = load_sft(str(tmp_path / "ds"))
    assert convos == [[U("p1"), A("c1")], [U("p2"), A("c2")]] and not report.rejected
    assert report.total == 2  # state.json and dataset_info.json are not read as data
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_sft(str(tmp_path / "dd"))[0]) == 2  # train by default
    convos, report = load_sft({"path": str(tmp_path / "dd"), "split": "test"})
    assert convos == [[U("p1"), A("c1")]]
    assert report.rejected == [] and next(iter_rows({"path": str(tmp_path / "dd"), "split": "test"}))[0] == (
        f"{tmp_path}/dd[test]:row 0")
    with pytest.raises(DataError, match=r"split 'validation' not in \['train', 'test'\]"):
        load_sft({"path": str(tmp_path / "dd"), "split": "validation"})


@pytest.fixture
def hub_layout_repo(tmp_path, monkeypatch):
    """A local folder laid out like a hub dataset repo: README configs, data files per split."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    repo = tmp_path / "org" / "tiny-sft"
    (repo / "data").mkdir(parents=True)
    (repo / "alpaca").mkdir()
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n"
        "  - split: test\n    path: data/test.jsonl\n- config_name: alpaca\n  data_files:\n  - split: train\n"
        "    path: alpaca/*.jsonl\n---\n# tiny\n")
    _jsonl(repo / "data" / "train.jsonl", [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}])
    _jsonl(repo / "data" / "test.jsonl", [{"prompt": "t1", "response": "x"}])
    _jsonl(repo / "alpaca" / "a.jsonl", [{"instruction": "i", "input": "", "output": "o"}])
    return repo


def test_hub_dataset_ids_through_load_dataset(hub_layout_repo):
    """`name`/`config`/`split` go to `datasets.load_dataset`; offline, a local folder laid out like a hub
    repo stands in for a hub id (the download itself cannot be exercised on this machine)."""
    repo = str(hub_layout_repo)
    assert len(load_sft({"name": repo})[0]) == 2  # split train by default
    assert load_sft({"name": repo, "split": "test"})[0] == [[U("t1"), A("x")]]
    convos, report = load_sft({"name": repo, "config": "alpaca", "split": "train"})
    assert convos == [[U("i"), A("o")]] and report.layouts == {"alpaca": 1}
    assert next(iter_rows({"name": repo, "config": "alpaca"}))[0] == f"hub:{repo}/alpaca:row 0"
    # a folder path with a split reads that split the same way
    assert load_sft({"path": repo, "split": "test"})[0] == [[U("t1"), A("x")]]
    with pytest.raises(DataError, match="load_dataset failed: ValueError: BuilderConfig 'nope' not found"):
        load_sft({"name": repo, "config": "nope"})


def test_source_specs_resolve_and_fail_in_one_line(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert resolve(str(tmp_path / "a.jsonl")).path == str(tmp_path / "a.jsonl")
    assert resolve("org/dataset").name == "org/dataset"  # not a local path: a hub id
    assert resolve("missing.jsonl").path == "missing.jsonl" and resolve("s3://b/k").path == "s3://b/k"
    assert str(resolve({"name": "org/x", "config": "c", "split": "test"})) == "hub:org/x/c[test]"
    with pytest.raises(DataError, match="does not exist"):
        load_sft(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="a single file has none"):
        load_sft({"path": str(tmp_path / "a.jsonl"), "split": "train"})
    with pytest.raises(DataError, match="exactly one of path"):
        resolve({"path": "a", "name": "b"})

    from batray.config import load_config

    cfg = load_config(None, [f"sft.data.path={tmp_path}/a.jsonl", "sft.data.split=train", "data.prompts=org/prompts"])
    assert cfg.sft.data == {"path": f"{tmp_path}/a.jsonl", "split": "train"} and cfg.data.prompts == "org/prompts"
    with pytest.raises(ConfigError, match=r"sft.data: Value error, unknown data source key 'pth'"):
        load_config(None, ["sft.data.pth=x"])
    with pytest.raises(ConfigError, match="reward.data: .*config is a hub dataset's configuration"):
        load_config(None, ["reward.data.path=x", "reward.data.config=y"])


# ---- the library functions the stages call -------------------------------------------------------------


def test_prompt_stream_renders_message_list_prompts_and_writes_rejects(tiny_tokenizer, tmp_path):
    from batray.ppo.data import PromptStream

    rows = [{"text": "What is the capital of Veloria?"}, {"text": [S("be brief"), U("Who is Ada Quill?")]},
            {"text": ""}, {"prompt": "no text column"}]
    stream = PromptStream.from_file(_jsonl(tmp_path / "p.jsonl", rows), tiny_tokenizer, seed=0, max_prompt_tokens=256,
                                    keys=Keys("ppo", prompt="text"), rejected_out=str(tmp_path / "rejected.jsonl"))
    assert len(stream) == 2
    chat = tiny_tokenizer.apply_chat_template
    assert tiny_tokenizer.decode(stream.prompt_ids[0]) == chat([U(rows[0]["text"])], tokenize=False)
    assert tiny_tokenizer.decode(stream.prompt_ids[1]) == chat(rows[1]["text"], tokenize=False)
    rejected = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"].rsplit(":", 1)[1] for r in rejected] == ["3", "4"]
    assert "no column 'text' (ppo.prompt_key)" in rejected[1]["reason"]


def test_pairs_prompts_from_the_config(tmp_path):
    from batray.config import load_config
    from batray.data.load import load_pairs_prompts

    _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi.", "output": "hi", "id": "s1"},
                                       {"instruction": "Sum.", "input": "1+1", "output": "2"},
                                       {"instruction": "Be kind.", "system": "s", "output": "ok"},
                                       {"output": "no instruction"}])
    cfg = load_config(None, [f"run_dir={tmp_path}/run", f"pairs.prompts={tmp_path}/alpaca.jsonl"])
    prompts = load_pairs_prompts(cfg, cfg.pairs.prompts, str(tmp_path / "pairs"))
    assert [(p["prompt"], p["id"]) for p in prompts] == [("Say hi.", "s1"), ("Sum.\n\n1+1", None)]
    rejected = (tmp_path / "pairs" / "rejected_prompts.jsonl").read_text()
    assert "one user turn" in rejected and "unrecognised prompts row" in rejected
    cfg = load_config(None, [f"run_dir={tmp_path}/run", f"pairs.prompts={tmp_path}/alpaca.jsonl", "pairs.max_prompts=1"])
    assert len(load_pairs_prompts(cfg, cfg.pairs.prompts, str(tmp_path / "pairs"))) == 1
    with pytest.raises(DataError, match="no usable"):
        bad = load_config(None, [f"pairs.prompts={tmp_path}/alpaca.jsonl", "pairs.prompt_key=x"])
        load_pairs_prompts(bad, bad.pairs.prompts, str(tmp_path / "pairs2"))


def test_normalize_messages_takes_keys_and_contract_check_accepts_every_layout(tmp_path):
    from batray.data.io import read_rows

    assert normalize_messages({"q": "hi", "a": "hello"}, Keys("sft", input="q", output="a")) == [U("hi"), A("hello")]
    rows = [{"instruction": "i", "output": "o"}, {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
            {"nothing": 1}]
    good, report = read_rows(_jsonl(tmp_path / "s.jsonl", rows), "sft")
    assert good == rows[:2] and report.rejected[0]["reason"].startswith("bad sft row: unrecognised sft row")


# ---- the reference data sets in ../shared/datasets (skipped when absent) ---------------------------------

SHARED_DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
SEED_TASKS = SHARED_DATASETS / "alpaca-seed" / "seed_tasks.jsonl"
HH_HARMLESS = SHARED_DATASETS / "hh-rlhf-harmless" / "test.jsonl.gz"


@pytest.mark.skipif(not SEED_TASKS.is_file(), reason="../shared/datasets/alpaca-seed not present")
def test_self_instruct_seed_tasks_every_instance_an_example():
    tasks = [json.loads(line) for line in SEED_TASKS.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = [[U(t["instruction"] + (f"\n\n{i['input']}" if i["input"].strip() else "")), A(i["output"])]
                for t in tasks for i in t["instances"]]
    convos, report = load_sft(str(SEED_TASKS))
    assert convos == expected and len(convos) == sum(len(t["instances"]) for t in tasks)
    assert not report.rejected and report.layouts == {"self_instruct": len(expected)}
    prompts, _ = load_prompts(str(SEED_TASKS))
    assert [p["messages"] for p in prompts] == [c[:1] for c in expected]


@pytest.mark.skipif(not HH_HARMLESS.is_file(), reason="../shared/datasets/hh-rlhf-harmless not present")
def test_hh_rlhf_harmless_split():
    from batray.reward.data import parse_hh_dialogue

    triples, report, layout = load_triples(str(HH_HARMLESS))
    assert layout == "hh_rlhf" and report.total == 2312 and report.accepted + len(report.rejected) == 2312
    assert len(triples) == report.accepted and report.accepted >= 2300
    where, row = next(iter_rows(str(HH_HARMLESS)))
    chosen = parse_hh_dialogue(row["chosen"])
    assert where.endswith("test.jsonl.gz:1")
    assert triples[0].context == chosen[:-1] and triples[0].response_a == chosen[-1]["content"]
    assert triples[0].response_b == parse_hh_dialogue(row["rejected"])[-1]["content"] and triples[0].d == -1
    assert all(t.context[-1]["role"] == "user" for t in triples)


def test_readme_table_lists_every_layout():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith(("| SFT |", "| preferences |", "| prompts |"))]
    for kind, label in (("sft", "| SFT |"), ("preferences", "| preferences |"), ("prompts", "| prompts |")):
        for lay in LAYOUTS[kind]:
            cols = lay.columns if kind != "prompts" or lay.name == "prompt" else ()
            assert any(line.startswith(label) and all(f"`{c}`" in line.split("|")[2] for c in cols) for line in rows), lay
