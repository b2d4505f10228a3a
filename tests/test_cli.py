"""flas-chat through a pseudo-terminal, its Ctrl-C handling, and flas-demo from a clean cache."""

from __future__ import annotations

import io
import shutil
import subprocess

import pexpect
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flas_cpp.chat import ChatSession, run_repl


@pytest.fixture(scope="module")
def flow_gguf(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("cli") / "flow.gguf", "bf16")


def test_flas_chat_in_a_terminal(tiny_base_f32, flow_gguf, tmp_path):
    # the installed command, run away from the sources so that the installed package is imported
    chat = pexpect.spawn(shutil.which("flas-chat"), ["--base", str(tiny_base_f32), "--flow", str(flow_gguf),
                                                     "--max-tokens", "8", "--temp", "0", "--n-ctx", "512"],
                         encoding="utf-8", timeout=60, cwd=str(tmp_path))
    try:
        chat.expect("steering off")  # no concept given yet
        chat.expect("you> ")
        chat.sendline("/concept Talk like a pirate")
        chat.expect("concept: Talk like a pirate")
        chat.sendline("/flowtime 1.5")
        chat.expect("flowtime: 1.5")
        chat.sendline("/status")
        chat.expect(r"steering on \| concept: 'Talk like a pirate' \| flowtime: 1.5 \| steps: 3")
        chat.sendline("Hello there")
        chat.expect("model> ")
        chat.expect("you> ")
        chat.sendline("/status")
        chat.expect(r"turns: 1")
        chat.sendline("/compare Why is the sky blue?")
        chat.expect(r"\[baseline\] .*\n.*\[steered: Talk like a pirate, T=1.5\]")
        chat.sendline("/off")
        chat.expect("steering off")
        chat.sendline("/status")
        chat.expect("steering off")
        chat.sendline("/flowtime -3")
        chat.expect("error: flowtime must be a finite number >= 0")
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(tiny_base_f32, flow_gguf, monkeypatch):
    model = FlasModel(tiny_base_f32, flow_gguf, n_ctx=512)
    out = io.StringIO()
    session = ChatSession(model, "Talk like a pirate", 2.0, None, 0.0, 16, 0, out.write)
    real_stream = model.stream

    def interrupted_stream(**kwargs):
        it = real_stream(**kwargs)
        yield next(it)
        it.close()
        raise KeyboardInterrupt  # what Ctrl-C does while a reply streams

    monkeypatch.setattr(model, "stream", interrupted_stream)
    run_repl(session, io.StringIO("Hello\n/status\n"))
    assert "[stopped]" in out.getvalue()
    assert "turns: 1" in out.getvalue()  # the partial reply stays in the history
    monkeypatch.setattr(model, "stream", real_stream)
    session.reply("And then?")  # the model is still usable
    assert len(session.history) == 4


def test_no_error_ends_the_repl(tiny_base_f32, flow_gguf, monkeypatch):
    model = FlasModel(tiny_base_f32, flow_gguf, n_ctx=512)
    out = io.StringIO()
    session = ChatSession(model, None, 2.0, None, 0.0, 4, 0, out.write)

    def failing_stream(**kwargs):
        yield "half"
        raise RuntimeError("device lost: the RPC server went away")

    monkeypatch.setattr(model, "stream", failing_stream)
    run_repl(session, io.StringIO("Hello\n/status\n/quit\n"))
    text = out.getvalue()
    assert "error: RuntimeError: device lost: the RPC server went away" in text
    assert "turns: 0" in text  # the failed reply left the conversation as it was


def test_flas_demo_from_a_clean_cache(tmp_path):
    cache = tmp_path / "cache"
    run = subprocess.run([shutil.which("flas-demo"), "--cache-dir", str(cache), "--max-tokens", "12"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "building the demo models" in run.stderr
    assert "baseline (no steering)" in run.stdout and "steered: 'Talk like a pirate', T = 2" in run.stdout
    assert sorted(p.name for p in cache.iterdir()) == ["demo-base-f16.gguf", "demo-flow-bf16.gguf"]
    # the speed line says what it measures, and that the demo's flow is as large as its base
    share = (cache / "demo-flow-bf16.gguf").stat().st_size / (cache / "demo-base-f16.gguf").stat().st_size
    assert f"(every token runs the flow N = 3 times; its file is {share:.0%} of the base's)" in run.stdout
    assert "Its flow is as large as its base, so steering costs far more here" in run.stdout
    again = subprocess.run([shutil.which("flas-demo"), "--cache-dir", str(cache), "--max-tokens", "12"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and "building" not in again.stderr

    def text_only(stdout: str) -> list[str]:  # timings differ between runs; greedy text does not
        return [line for line in stdout.splitlines() if not any(w in line for w in ("tok/s", "prefill", "speed"))]

    assert text_only(again.stdout) == text_only(run.stdout)

    # flas-chat with no models named starts on the same demo models (the cache is built)
    chat = subprocess.run([shutil.which("flas-chat"), "--cache-dir", str(cache), "--max-tokens", "4"],
                          input="/status\nHello\n/quit\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert f"base: {cache / 'demo-base-f16.gguf'} (gemma2)" in chat.stdout
    assert "the demo model has random weights" in chat.stdout and "turns: 0" in chat.stdout
    assert "model> " in chat.stdout and "building" not in chat.stderr
    half = subprocess.run([shutil.which("flas-chat"), "--base", str(cache / "demo-base-f16.gguf")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert half.returncode == 2 and "pass both --base and --flow" in half.stderr
