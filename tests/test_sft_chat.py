"""`batray chat`: multi-turn conversation with streaming on a tiny checkpoint, driven through stdin."""

from __future__ import annotations

import io
import sys


def test_chat_session_is_multi_turn(tiny_checkpoint):
    from batray.chat import ChatSession

    session = ChatSession(tiny_checkpoint, system="Be brief.", max_new_tokens=5, temperature=0)
    out = io.StringIO()
    first = session.reply("What is the capital of Veloria?", out)
    second = session.reply("And in Chinese?", out)
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first
    rendered = session.tokenizer.apply_chat_template(session.messages[:4], tokenize=False)
    assert "[Turn 2]" in rendered and "What is the capital of Veloria?" in rendered
    streamed = out.getvalue()
    assert streamed.endswith("\n") and first in streamed and streamed.index(second) >= len(first)
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]


def test_chat_command_reads_stdin(tiny_checkpoint, monkeypatch, capsys):
    from jobs.chat import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi again\n/quit\n"))
    assert main([tiny_checkpoint, "--max-new-tokens", "3", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("bat> ") == 2 and "(new conversation)" in out and "you> hi again" in out
