"""The SFT row's diagnostics: does the model hold the held-out facts, and do its answers name the subject?"""

from __future__ import annotations

import random

import torch

from batray.config.stages import DemoDataConfig
from batray.data.demo import _question_row, build_world, corpus_rows, render
from batray.data.demo_text import TEMPLATES
from batray.measure import knowledge_probe, names_subject, statement_candidates


def _world_and_questions():
    world = build_world(DemoDataConfig(seed=3, num_countries=4, num_people=4))
    facts = [f for f in world.facts.values() if f.relation in ("capital", "birth_year")][:4]
    rng = random.Random(0)
    questions = [_question_row(world, f.relation, f.subject, lang, rng) for f in facts for lang in ("en", "zh")]
    return world, facts, questions


def test_an_answer_names_the_subject_only_when_it_names_the_asked_entity():
    world, _, questions = _world_and_questions()
    q = next(q for q in questions if q["relation"] == "capital" and q["lang"] == "en")
    other = next(e for e in world.of_type("country") if e.id != q["subject"])
    subject = world.entities[q["subject"]]
    assert names_subject(world, q, f"The capital of {subject.en} is Nowhere.")
    assert names_subject(world, q, f"{subject.zh}的首都是某地。")  # either language's name counts
    assert not names_subject(world, q, f"The capital of {other.en} is Nowhere.")  # a replayed answer about another country


def test_knowledge_probe_finds_facts_a_model_was_trained_on_and_not_in_a_fresh_one():
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import direction_ids, train_bpe

    world, facts, questions = _world_and_questions()
    tok = train_bpe([r["text"] for r in corpus_rows(world, 2, random.Random(0))], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tok)), seed=0)
    fresh = knowledge_probe(model.eval(), tok, world, questions)
    assert fresh["n"] == 8  # one per (fact, language), not per question
    assert fresh["k"] < 8

    # Teach the model exactly the sentences the probe scores, with the gold objects.
    l2r = direction_ids(tok)[0]
    texts = [render(world, TEMPLATES[f.relation]["state"][lang][0], f.subject, f.object, lang)
             for f in facts for lang in ("en", "zh")]
    rows = [[l2r, *ids, tok.eos_token_id] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = knowledge_probe(model.eval(), tok, world, questions)
    assert trained["k"] == 8, trained


def test_statement_candidates_put_the_gold_object_first_among_rivals_of_its_kind():
    world, facts, _ = _world_and_questions()
    for f in facts:
        cands = statement_candidates(world, f)
        assert cands[0] == f.object and f.object not in cands[1:] and len(cands) >= 4
        if not isinstance(f.object, int):
            assert {world.entities[c].type for c in cands} == {world.entities[f.object].type}
