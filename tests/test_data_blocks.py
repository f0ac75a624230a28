"""The data building blocks: readers with reject reports, Eq. 1 direction and packing, SFT masking,
the tokenizer's round trip and chat template."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batray.data.direction import IGNORE_INDEX, l2r_sample, pack_samples, r2l_sample, unreverse
from batray.data.io import read_rows, write_jsonl, write_parquet, write_rejected
from batray.data.sft import SampleError, build_sft_sample, chat_pieces, normalize_messages
from batray.errors import DataError

# ---- io: JSONL, Parquet, gzip; nothing silently dropped -----------------------------------------

GOOD = [{"text": "The capital of Veloria is Marnet."}, {"text": "维洛里亚的首都是马尔内。"}]


def _messy_jsonl() -> bytes:
    lines = [
        json.dumps(GOOD[0]),
        "{not json",
        json.dumps(GOOD[1], ensure_ascii=False),
        "",  # blank lines are not rows
        json.dumps([1, 2]),
        json.dumps({"text": "   "}),
        json.dumps({"txt": "misspelled key"}),
    ]
    return ("\n".join(lines) + "\n").encode("utf-8") + b"\xff\xfe broken utf-8\n"


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_bad_lines_and_rows_are_counted_and_written_aside(tmp_path, gz):
    raw = _messy_jsonl()
    path = tmp_path / ("corpus.jsonl.gz" if gz else "corpus.jsonl")
    path.write_bytes(gzip.compress(raw) if gz else raw)

    rows, report = read_rows(str(path), "corpus")

    assert rows == GOOD
    assert report.total == 7 and report.accepted == 2 and len(report.rejected) == 5
    reasons = report.reasons()
    assert reasons["invalid JSON"] == 1 and reasons["not a JSON object"] == 1 and reasons["invalid UTF-8"] == 1
    assert reasons["text is empty"] == 1 and reasons["text missing or not a string"] == 1
    assert [r["where"].rsplit(":", 1)[1] for r in report.rejected] == ["2", "5", "6", "7", "8"]
    assert "7 rows, 2 accepted, 5 rejected" in report.summary("corpus")

    out = tmp_path / "rejected" / "corpus.rejected.jsonl"
    assert write_rejected(report, str(out)) == str(out)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(written) == 5
    assert written[0]["row"] == "{not json" and written[0]["reason"].startswith("invalid JSON")
    assert written[3]["row"] == {"txt": "misspelled key"} and written[4]["reason"] == "invalid UTF-8"


def test_parquet_and_folders(tmp_path):
    write_parquet([{"text": "Marnet."}, {"text": None}, {"text": "马尔内。"}], str(tmp_path / "d" / "a.parquet"))
    rows, report = read_rows(str(tmp_path / "d" / "a.parquet"), "corpus")
    assert [r["text"] for r in rows] == ["Marnet.", "马尔内。"]
    assert report.rejected[0]["where"].endswith(":row 1")

    # A folder: every data file in it, in name order; other files ignored.
    write_jsonl(GOOD, str(tmp_path / "d" / "b.jsonl"))
    (tmp_path / "d" / "notes.txt").write_text("not data")
    rows, report = read_rows(str(tmp_path / "d"), "corpus")
    assert report.total == 5 and report.accepted == 4
    assert [r["text"] for r in rows] == ["Marnet.", "马尔内。", *(g["text"] for g in GOOD)]
    assert write_rejected(read_rows(str(tmp_path / "d" / "b.jsonl"), "corpus")[1], str(tmp_path / "x")) is None


def test_sft_and_preference_contracts(tmp_path):
    rows = [
        {"prompt": "Hi", "response": "Hello"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]},
        {"messages": [{"role": "robot", "content": "q"}]},
        {"messages": [{"role": "user", "content": "q"}]},
        {"prompt": "only a prompt"},
        {"messages": "not a list"},
    ]
    write_jsonl(rows, str(tmp_path / "sft.jsonl"))
    good, report = read_rows(str(tmp_path / "sft.jsonl"), "sft")
    assert len(good) == 2 and len(report.rejected) == 5
    assert all(r["reason"].startswith("bad sft row") for r in report.rejected)

    pref = {"pair_id": "p", "prompt": "q", "response_a": "a", "response_b": "b", "d": -1}
    write_jsonl([pref, {**pref, "d": 2}, {**pref, "helpfulness": "meh"}, {**pref, "source": "alien"}],
                str(tmp_path / "p.jsonl"))
    good, report = read_rows(str(tmp_path / "p.jsonl"), "preferences")
    assert good == [pref] and len(report.rejected) == 3


def test_read_errors_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_rows(str(tmp_path / "missing.jsonl"), "corpus")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="decompress"):
        read_rows(str(tmp_path / "bad.jsonl.gz"), "corpus")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="Parquet"):
        read_rows(str(tmp_path / "bad.parquet"), "corpus")
    (tmp_path / "ok.jsonl").write_text(json.dumps(GOOD[0]) + "\n")
    with pytest.raises(DataError, match="unknown data contract"):
        read_rows(str(tmp_path / "ok.jsonl"), "corpse")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jsonl"):
        read_rows(str(tmp_path / "empty"), "corpus")


def test_parquet_with_message_lists_round_trips(tmp_path):
    from batray.data.schemas import SFT_MESSAGES

    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    table = pa.Table.from_pylist([{"messages": messages}], schema=SFT_MESSAGES)
    pq.write_table(table, tmp_path / "sft.parquet")
    rows, report = read_rows(str(tmp_path / "sft.parquet"), "sft")
    assert report.accepted == 1 and normalize_messages(rows[0]) == messages


# ---- direction (Eq. 1) and packing ---------------------------------------------------------------

L2R, R2L, EOS, PAD = 1, 2, 3, 0
MARKERS = {L2R: 0, R2L: 1}


def test_reversal_with_marker_and_unreverse():
    tokens = [10, 11, 12, 13]
    assert l2r_sample(tokens, L2R, EOS) == [L2R, 10, 11, 12, 13, EOS]
    r = r2l_sample(tokens, R2L, EOS)
    assert r == [R2L, 13, 12, 11, 10, EOS]
    assert unreverse(r) == tokens


def _segments(block):
    """Split a block into (marker, tokens, labels, positions, directions) segments, stopping at padding."""
    segs, cur = [], None
    for i, tok in enumerate(block.input_ids):
        if tok in MARKERS:
            cur = [tok, [], [], [block.position_ids[i]], [block.directions[i]]]
            segs.append(cur)
            assert block.labels[i] == IGNORE_INDEX, "a label predicts a direction marker"
        elif tok == PAD:
            assert block.labels[i] == IGNORE_INDEX
            cur = None
        else:
            assert cur is not None, "a token outside any segment"
            cur[1].append(tok)
            cur[2].append(block.labels[i])
            cur[3].append(block.position_ids[i])
            cur[4].append(block.directions[i])
    return segs


@pytest.mark.parametrize("block_len", [4, 7, 16, 33])
def test_packing_keeps_markers_positions_and_every_token(block_len):
    rng = random.Random(block_len)
    samples = []
    for _ in range(40):
        toks = [rng.randrange(10, 99) for _ in range(rng.randrange(1, 40))]
        samples.append((r2l_sample(toks, R2L, EOS), 1) if rng.random() < 0.5 else (l2r_sample(toks, L2R, EOS), 0))

    blocks = list(pack_samples(samples, block_len, PAD))

    stream = []  # (token, marker of the segment it sits in), over all blocks
    for b in blocks:
        assert len(b.input_ids) == len(b.labels) == len(b.position_ids) == len(b.directions) == block_len
        for marker, toks, labels, pos, dirs in _segments(b):
            assert toks, "a marker with no tokens after it"
            assert labels == toks  # HF convention: labels are the tokens, the model shifts
            assert pos == list(range(len(toks) + 1))  # positions restart on every segment
            assert set(dirs) == {MARKERS[marker]}
            stream += [(t, marker) for t in toks]
    expected = [(t, toks[0]) for toks, _ in samples for t in toks[1:]]
    assert stream == expected  # nothing lost, order kept, continuations re-carry their marker
    assert sum(b.input_ids.count(PAD) for b in blocks[:-1]) <= len(blocks) - 1  # at most 1 pad per full block


def test_continuation_segment_starts_with_its_marker_again():
    sample = r2l_sample(list(range(10, 20)), R2L, EOS)  # 12 tokens
    blocks = list(pack_samples([(sample, 1)], 8, PAD))
    assert blocks[0].input_ids == sample[:8]
    assert blocks[1].input_ids[:6] == [R2L, *sample[8:]] + [PAD]
    assert blocks[1].position_ids[:5] == [0, 1, 2, 3, 4]
    assert blocks[1].labels[0] == IGNORE_INDEX and blocks[1].labels[5:] == [IGNORE_INDEX] * 3
    with pytest.raises(ValueError):
        list(pack_samples([(sample, 1)], 3, PAD))


# ---- SFT masking and truncation (Eq. 2) ----------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are BatGPT."},
    {"role": "user", "content": "What is the capital of Veloria?"},
    {"role": "assistant", "content": "The capital of Veloria is Marnet."},
    {"role": "user", "content": "维洛里亚的首都是哪里？"},
    {"role": "assistant", "content": "维洛里亚的首都是马尔内。"},
    {"role": "user", "content": "Thank you!"},
    {"role": "assistant", "content": "You are welcome."},
]


def _runs(labels):
    """Maximal runs of trained (label != IGNORE) positions as (start, end)."""
    runs, start = [], None
    for i, lab in enumerate([*labels, IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("loss_on", ["last", "all"])
def test_sft_masking_token_by_token(tiny_tokenizer, loss_on):
    s = build_sft_sample(tiny_tokenizer, CONVERSATION, max_len=10_000, loss_on=loss_on)
    assert s.dropped_turns == 0 and len(s.input_ids) == len(s.labels)
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tiny_tokenizer.decode(s.input_ids) == text
    for i, lab in enumerate(s.labels):
        assert lab in (IGNORE_INDEX, s.input_ids[i])  # a trained position's label is its own token
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    trained = answers if loss_on == "all" else answers[-1:]
    runs = _runs(s.labels)
    assert [tiny_tokenizer.decode(s.input_ids[a:b]) for a, b in runs] == [f"{t}\n\n<eop>" for t in trained]
    # Everything else (direction token, system block, turn headers, questions) carries no loss.
    untrained = [i for i, lab in enumerate(s.labels) if lab == IGNORE_INDEX]
    assert untrained[0] == 0 and s.input_ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|l2r|>")
    assert runs[-1][1] == len(s.input_ids)  # the last response ends the sample


def test_sft_truncation_drops_oldest_turns_keeps_system(tiny_tokenizer):
    full = build_sft_sample(tiny_tokenizer, CONVERSATION, max_len=10_000)
    last_only = [CONVERSATION[0], *CONVERSATION[-2:]]
    short = build_sft_sample(tiny_tokenizer, last_only, max_len=10_000)
    s = build_sft_sample(tiny_tokenizer, CONVERSATION, max_len=len(short.input_ids))
    assert len(full.input_ids) > len(s.input_ids)
    assert s.dropped_turns == 2 and s.input_ids == short.input_ids and s.labels == short.labels
    text = tiny_tokenizer.decode(s.input_ids)
    assert text.startswith("<|l2r|>[System]\n\nYou are BatGPT.\n\n<eot>[Turn 1]\n\n[User] Thank you!")
    assert "Veloria" not in text

    with pytest.raises(SampleError, match="max_len"):
        build_sft_sample(tiny_tokenizer, CONVERSATION, max_len=len(short.input_ids) - 1)
    with pytest.raises(ValueError, match="loss_on"):
        build_sft_sample(tiny_tokenizer, CONVERSATION, max_len=100, loss_on="first")


# ---- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trips_english_and_chinese(tiny_tokenizer):
    for text in [
        "The capital of Veloria is Marnet.",
        "维洛里亚的首都是马尔内。  Mixed 中英文 text , with odd spacing .\n\n\ttabs",
        "全角：ＡＢＣ１２３，emoji 🦇 and unseen 字符 龘",
    ]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize("messages", [
    CONVERSATION,
    CONVERSATION[1:3],
    CONVERSATION[:4],  # ends with the user: a generation prompt ending in "[Assistant] "
])
def test_chat_template_equals_chat_pieces(tiny_tokenizer, messages):
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "".join(text for text, _ in chat_pieces(messages))
    assert rendered.startswith("<|l2r|>")
    if messages[-1]["role"] == "user":
        assert rendered.endswith("[Assistant] ")


def test_special_tokens_are_single_ids_and_survive_save_and_load(tiny_tokenizer, tmp_path):
    from batray.models.tokenizer import SPECIAL_TOKENS, load_tokenizer

    for tok in SPECIAL_TOKENS:
        assert len(tiny_tokenizer(f"a{tok}b", add_special_tokens=False)["input_ids"]) == 3, tok
    tiny_tokenizer.save_pretrained(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == text
    assert again(text, add_special_tokens=False)["input_ids"] == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_ray_dataset_streams_jsonl_gz(ray_session, tmp_path):
    """Ray Data reads the same gzipped JSONL as read_rows (one dataset: Ray Data jobs are slow to start)."""
    from batray.data.io import ray_dataset

    rows = [{"text": f"row {i} 第{i}行"} for i in range(20)]
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl.gz").write_bytes(gzip.compress(blob))
    assert read_rows(str(tmp_path / "j"), "corpus")[0] == rows
    got = sorted(ray_dataset(str(tmp_path / "j")).take_all(), key=lambda r: int(r["text"].split()[1]))
    assert [r["text"] for r in got] == [r["text"] for r in rows]
    # a folder mixing formats: each read by its own reader, joined
    write_parquet(rows[:5], str(tmp_path / "j" / "b.parquet"))
    mixed = sorted(r["text"] for r in ray_dataset(str(tmp_path / "j")).take_all())
    assert mixed == sorted(r["text"] for r in rows + rows[:5])
