"""flas-server over HTTP, in a subprocess on a free port: the official openai client, concurrency,
disconnects, a full queue, every error, against FlasModel run directly with the same settings."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request

PIRATE, NOIR, LEGAL = "Talk like a pirate", "Respond as a noir detective", "Use legal terminology"
PROMPTS = ["Tell me about your day.", "Why is the sky blue?", "Write a limerick about a cat.", "What is a flow?"]


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("server") / "flow-f32.gguf", "f32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(base: Path, flow: Path, *args: str, env: dict | None = None):
    """serve() on a base and a flow GGUF."""
    return serve("--base", str(base), "--flow", str(flow), *args, env=env)


@contextmanager
def serve(*args: str, env: dict | None = None):
    """The installed flas-server command with these arguments, run away from the sources; yields
    its base URL once healthy, and checks at the end that SIGTERM stopped it cleanly."""
    port = free_port()
    cmd = [shutil.which("flas-server"), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/",
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        else:
            raise AssertionError("flas-server did not become healthy")
        yield url
    finally:
        proc.terminate()  # SIGTERM: a clean shutdown
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def url(tiny_base_f32, flow):
    with server(tiny_base_f32, flow, "--parallel", "4", "--n-ctx", "1024", "--exact", "--queue", "64",
                "--preset", f"pirate={PIRATE}@2:3", "--preset", f"noir={NOIR}@1.0", "--max-body", "20000",
                "--cors", "http://app.example") as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def solo(tiny_base_f32, flow):
    return FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True)


def chat(client, prompt: str, steering: dict | None = None, model: str = "flas", **kw):
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, extra_body=extra, **kw)


# ---- the official client ---------------------------------------------------------------------

def test_chat_with_steering_through_extra_body_equals_the_model(client, solo):
    r = chat(client, PROMPTS[0], {"concept": PIRATE, "flowtime": 2.0, "n_steps": 3}, max_tokens=16)
    want = solo.generate(PROMPTS[0], concept=PIRATE, flowtime=2.0, n_steps=3, max_tokens=16, temperature=0.0)
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (19, 16, 35)
    assert r.model_extra["steering"] == {"concept": PIRATE, "flowtime": 2.0, "n_steps": 3}
    plain = chat(client, PROMPTS[0], max_tokens=16)
    assert plain.choices[0].message.content == solo.generate(PROMPTS[0], flowtime=0.0, max_tokens=16,
                                                             temperature=0.0).text
    assert plain.model_extra["steering"] is None and plain.choices[0].message.content != want.text


def test_a_flowtime_schedule_in_the_body_steers_as_the_model(client, solo):
    ramp = [[0, 0.5], [8, 3.0]]
    r = chat(client, PROMPTS[0], {"concept": PIRATE, "flowtime": ramp}, max_tokens=16)
    want = solo.generate(PROMPTS[0], concept=PIRATE, flowtime=[(0, 0.5), (8, 3.0)], max_tokens=16, temperature=0.0)
    assert r.choices[0].message.content == want.text
    assert want.text != solo.generate(PROMPTS[0], concept=PIRATE, flowtime=0.5, max_tokens=16, temperature=0.0).text
    assert r.model_extra["steering"] == {"concept": PIRATE, "flowtime": ramp, "n_steps": 3}
    streamed = client.chat.completions.create(model="flas", messages=[{"role": "user", "content": PROMPTS[0]}],
                                              temperature=0, max_tokens=16, stream=True,
                                              extra_body={"steering": {"concept": PIRATE, "flowtime": ramp}})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want.text


def test_completion_takes_the_prompt_as_it_is(client, solo):
    r = client.completions.create(model="flas", prompt="Once upon a time", max_tokens=12, temperature=0,
                                  extra_body={"steering": {"concept": NOIR, "flowtime": 1.5}})
    want = solo.submit(Request(prompt="Once upon a time", raw=True, concept=NOIR, flowtime=1.5, max_tokens=12,
                               temperature=0.0)).result()
    assert r.choices[0].text == want.text and r.object == "text_completion"
    assert r.usage.prompt_tokens == len(solo.tokenize("Once upon a time"))


def test_streaming_gives_the_same_text_and_usage(client):
    kw = dict(max_tokens=20)
    whole = chat(client, PROMPTS[1], {"concept": LEGAL}, **kw).choices[0].message.content
    stream = chat(client, PROMPTS[1], {"concept": LEGAL}, stream=True, stream_options={"include_usage": True}, **kw)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices
    assert chunks[1].model_extra["steering"]["concept"] == LEGAL


def test_a_preset_is_a_model_and_the_body_overrides_it(client, solo):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["flas", "pirate", "noir"]
    r = chat(client, PROMPTS[2], model="pirate", max_tokens=12)
    assert r.choices[0].message.content == solo.generate(PROMPTS[2], concept=PIRATE, flowtime=2.0, n_steps=3,
                                                         max_tokens=12, temperature=0.0).text
    assert r.model == "pirate" and r.model_extra["steering"]["concept"] == PIRATE
    override = chat(client, PROMPTS[2], {"concept": NOIR, "flowtime": 0.5}, model="pirate", max_tokens=12)
    assert override.choices[0].message.content == solo.generate(PROMPTS[2], concept=NOIR, flowtime=0.5,
                                                                max_tokens=12, temperature=0.0).text
    off = chat(client, PROMPTS[2], {"concept": None, "flowtime": 0}, model="noir", max_tokens=12)
    assert off.model_extra["steering"] is None


def test_stop_strings_cut_the_reply(client):
    whole = chat(client, PROMPTS[0], {"concept": PIRATE}, max_tokens=24).choices[0].message.content
    stop = whole[5:8]
    assert stop and whole.find(stop) >= 0
    cut = chat(client, PROMPTS[0], {"concept": PIRATE}, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == whole[:whole.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       chat(client, PROMPTS[0], {"concept": PIRATE}, max_tokens=24, stop=stop, stream=True) if c.choices)
    assert streamed == whole[:whole.find(stop)]


# ---- concurrency ------------------------------------------------------------------------------

def test_eight_concurrent_clients_each_equal_their_solo_run(client, solo):
    cases = [(PROMPTS[i % 4], [PIRATE, NOIR, LEGAL, None][i % 4], 1.0 + (i % 3)) for i in range(8)]
    got: dict[int, str] = {}

    def run(i: int) -> None:
        prompt, concept, t = cases[i]
        steering = {"concept": concept, "flowtime": t} if concept else {"concept": None, "flowtime": 0}
        got[i] = chat(client, prompt, steering, max_tokens=14).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, (prompt, concept, t) in enumerate(cases):
        want = solo.generate(prompt, concept=concept, flowtime=t if concept else 0.0, max_tokens=14, temperature=0.0)
        assert got[i] == want.text, cases[i]


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_client_that_disconnects_frees_its_sequence(url, client):
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 200, "stream": True}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    for _ in range(100):  # the server notices, cancels, and the sequence is free
        if metric(url, "flas_busy_slots") == 0:
            break
        time.sleep(0.05)
    assert metric(url, "flas_busy_slots") == 0
    assert chat(client, PROMPTS[1], max_tokens=4).choices[0].finish_reason == "length"


def test_a_full_queue_answers_503_with_retry_after(tiny_base_f32, flow):
    # replies long enough to hold the one sequence and the one place in the queue while we look
    with server(tiny_base_f32, flow, "--parallel", "1", "--queue", "1", "--n-ctx", "32768") as u:
        # greedy: a sampled reply (random seed by default) could end early at an end-of-generation token
        body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 32000, "stream": True,
                "temperature": 0}
        with httpx.Client(timeout=30) as h1, httpx.Client(timeout=30) as h2:
            with h1.stream("POST", u + "/v1/chat/completions", json=body) as running:
                lines = running.iter_lines()  # kept: a dropped iterator closes the connection
                assert next(lines).startswith("data: ")
                with h2.stream("POST", u + "/v1/chat/completions", json=body) as waiting:
                    assert waiting.status_code == 200  # queued
                    for _ in range(100):
                        if metric(u, "flas_queue_length") == 1:
                            break
                        time.sleep(0.02)
                    assert metric(u, "flas_queue_length") == 1 and metric(u, "flas_busy_slots") == 1
                    full = httpx.post(u + "/v1/chat/completions", json={**body, "stream": False})
                    assert full.status_code == 503 and full.headers["retry-after"] == "1"
                    assert full.json()["error"]["code"] == "server_busy"
        for _ in range(100):  # both clients went away: their requests are cancelled
            if metric(u, "flas_queue_length") == 0 and metric(u, "flas_busy_slots") == 0:
                break
            time.sleep(0.05)
        ok = httpx.post(u + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200


# ---- errors -----------------------------------------------------------------------------------

GOOD = {"model": "flas", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize("change, status, param, code", [
    ({"temperature": "hot"}, 400, "temperature", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"max_tokens": 1.5}, 400, "max_tokens", None),
    ({"steering": {"concept": PIRATE, "flowtime": -1}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": float("nan")}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "n_steps": 0}}, 400, "steering.n_steps", None),
    ({"steering": {"concept": PIRATE, "flowtime": []}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[0, 1], [0, 2]]}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[0, 1], 2]}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[0, "1"]]}}, 400, "steering.flowtime[0].flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[0.5, 1]]}}, 400, "steering.flowtime[0].token", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[0, 1], [4, -1]]}}, 400, "steering.flowtime", None),
    ({"steering": {"concept": PIRATE, "flowtime": [[i, 1] for i in range(65)]}}, 400, "steering.flowtime", None),
    ({"steering": {"flowtime": [[0, 0], [4, 2]]}}, 400, "steering.concept", None),
    ({"steering": {"concept": PIRATE, "n_steps": 65}}, 400, "steering.n_steps", None),
    ({"steering": {"concept": ""}}, 400, "steering.concept", None),
    ({"steering": "pirate"}, 400, "steering", None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", None),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": "Hi\u0000"}]}, 400, None, None),  # NUL: refused, not cut short
    ({"steering": {"concept": "pirate\u0000"}}, 400, "steering.concept", None),
    ({"messages": [{"role": "user", "content": "pirate " * 400}]}, 400, "messages", "context_length_exceeded"),
    ({"n": 2}, 400, "n", None),
    ({"stop": [1]}, 400, "stop", None),
    ({"model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"messages": [{"role": "user", "content": "x" * 30000}]}, 413, None, None),
])
def test_each_bad_request_is_answered_and_the_server_keeps_serving(url, change, status, param, code):
    r = httpx.post(url + "/v1/chat/completions", content=json.dumps({**GOOD, **change}),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code
    assert httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=30).status_code == 200


def test_malformed_bodies_and_unknown_routes(url):
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(url + "/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.post(url + "/v1/completions", json={"model": "flas", "prompt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    unknown = httpx.post(url + "/v1/chat/completions", json={**GOOD, "frequency_penalty": 0.5, "user": "me"})
    assert unknown.status_code == 200  # unknown fields are ignored, as OpenAI's clients expect


def test_cors_allows_the_given_origin_only(url):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = httpx.options(url + "/v1/chat/completions", headers={"Origin": "http://app.example", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in other.headers


def test_an_api_key_guards_the_api_but_not_health(tiny_base_f32, flow):
    with server(tiny_base_f32, flow, "--parallel", "1", "--n-ctx", "512", env={"FLAS_API_KEY": "s3cret"}) as u:
        assert httpx.get(u + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(u + "/v1/chat/completions", json=GOOD, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert httpx.get(u + "/v1/models", headers=headers).status_code == 401
        ok = OpenAI(base_url=u + "/v1", api_key="s3cret", max_retries=0)
        assert chat(ok, "Hi", max_tokens=2).usage.completion_tokens == 2


def test_health_is_503_while_loading_and_metrics_count(url, tiny_base_f32, tmp_path):
    text = httpx.get(url + "/metrics").text
    assert "flas_requests_total{endpoint=\"chat\",status=\"200\"}" in text and "flas_slots 4" in text
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    port = free_port()
    proc = subprocess.Popen([shutil.which("flas-server"), "--base", str(tiny_base_f32), "--flow", str(broken),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if r.json()["status"] == "error":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert r.status_code == 503 and r.json()["error"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=GOOD)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_bad_flags_are_refused_in_one_line(tiny_base_f32, flow):
    for args, message in [(["--preset", "nothing"], "expected NAME=CONCEPT"),
                          (["--preset", "p=Pirate@x"], "T must be a number"),
                          (["--parallel", "0"], "--parallel must be >= 1"),
                          (["--base", str(tiny_base_f32)], "pass both --base and --flow")]:
        r = subprocess.run([shutil.which("flas-server"), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_rule_broken_through_the_server_reads_as_through_python_and_the_c_api(url, tiny_base_f32, flow):
    """One message per rule: the server's 400 carries the core's text (flas_check_steering /
    flas_check_request), the text Python raises."""
    from flas_cpp._native import core

    with pytest.raises(ValueError) as steering:
        core().check_steering(PIRATE, -1.0, 3)
    r = httpx.post(url + "/v1/chat/completions", json={**GOOD, "steering": {"concept": PIRATE, "flowtime": -1}},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == f"steering.flowtime: {steering.value}"
    with FlasModel(tiny_base_f32, flow, n_ctx=256) as m, pytest.raises(ValueError) as sampling:
        m.generate("Hi", flowtime=0.0, typical_p=0.0)
    r = httpx.post(url + "/v1/chat/completions", json={**GOOD, "typical_p": 0.0}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == str(sampling.value)
    assert str(sampling.value) == "typical_p must be in (0, 1] (1: off), got 0"
    r = httpx.post(url + "/v1/chat/completions", json={**GOOD, "repeat_last_n": -2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("repeat_last_n must be >= -1")
    r = httpx.post(url + "/v1/chat/completions", json={**GOOD, "min_p": "high"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_p"


# ---- changing a running completion -------------------------------------------------------------

def stream_events(url: str, body: dict, on_first=None) -> list[dict]:
    """The chunks of a streamed chat completion; on_first(id) is called at its first text."""
    events, called = [], False
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(json.loads(line[6:]))
            text = (events[-1].get("choices") or [{}])[0].get("delta", {}).get("content")
            if on_first and text and not called:
                called = True
                on_first(events[-1]["id"])
    return events


def test_a_running_completion_changes_its_steering_from_the_next_token(url, solo):
    body = {"model": "flas", "messages": [{"role": "user", "content": PROMPTS[0]}], "temperature": 0.8, "seed": 7,
            "max_tokens": 200, "steering": {"concept": PIRATE, "flowtime": 2.0}}
    sampled = dict(max_tokens=200, temperature=0.8, seed=7, top_k=0, top_p=1.0)  # the server's defaults
    answers = []

    def change(rid: str) -> None:
        answers.append(httpx.post(url + f"/v1/steering/{rid}", json={"flowtime": 0.5}, timeout=30))
        answers.append(httpx.post(url + f"/v1/steering/{rid}", json={"flowtime": -1}, timeout=30))

    events = stream_events(url, body, change)
    ok, bad = answers
    assert ok.status_code == 200, ok.text
    at = ok.json()["token"]
    assert ok.json() == {"id": events[0]["id"], "object": "steering.change", "token": at,
                         "steering": {"concept": PIRATE, "flowtime": 0.5, "n_steps": 3}}
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "steering.flowtime"
    # the same as a schedule that steps from T = 2 to 0.5 at that token, run alone
    step = [(0, 2.0), (at - 1, 2.0), (at, 0.5)] if at > 1 else [(0, 2.0), (1, 0.5)]
    want = solo.generate(PROMPTS[0], concept=PIRATE, flowtime=step, **sampled)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == want.text
    assert want.text != solo.generate(PROMPTS[0], concept=PIRATE, flowtime=2.0, **sampled).text
    assert events[-1]["steering"] == {"concept": PIRATE, "flowtime": 0.5, "n_steps": 3}  # chunks show what is in force
    # over: 404
    gone = httpx.post(url + f"/v1/steering/{events[0]['id']}", json={"flowtime": 1.0}, timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_change_the_flow_cannot_make_is_a_400_and_unknown_ids_404(url):
    body = {"model": "flas", "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0,
            "max_tokens": 200}
    answers = []
    events = stream_events(url, body, lambda rid: answers.append(
        httpx.post(url + f"/v1/steering/{rid}", json={"concept": PIRATE}, timeout=30)))
    assert answers[0].status_code == 400 and "started unsteered" in answers[0].json()["error"]["message"]
    assert events[-1]["steering"] is None  # it went on unsteered
    for rid, body in (("chatcmpl-nothing", {"flowtime": 1.0}), ("x" * 500, {})):
        r = httpx.post(url + f"/v1/steering/{rid}", json=body, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert len(r.json()["error"]["message"]) < 200


def test_telemetry_comes_per_token_in_the_chunks_and_the_response(url, client, solo):
    steering = {"concept": PIRATE, "flowtime": [[0, 0.5], [8, 2.0]], "telemetry": True}
    want = solo.generate(PROMPTS[2], concept=PIRATE, flowtime=[(0, 0.5), (8, 2.0)], max_tokens=16, temperature=0.0,
                         telemetry=True)
    r = chat(client, PROMPTS[2], steering, max_tokens=16)
    tel = r.model_extra["telemetry"]
    assert r.choices[0].message.content == want.text and len(tel) == r.usage.completion_tokens == 16
    assert [t["flowtime"] for t in tel] == [round(x.flowtime, 6) for x in want.telemetry]
    assert all(abs(t["displacement"] - x.displacement) <= 1e-4 * x.displacement for t, x in zip(tel, want.telemetry))
    stream = chat(client, PROMPTS[2], steering, max_tokens=16, stream=True)
    chunks = [c.model_extra.get("telemetry") for c in stream]
    assert all(c is not None for c in chunks)  # every chunk carries the field (empty when it has no token)
    assert [t["flowtime"] for c in chunks for t in c] == [t["flowtime"] for t in tel]
    assert "telemetry" not in chat(client, PROMPTS[2], {"concept": PIRATE}, max_tokens=4).model_extra
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                       "steering": {"concept": PIRATE, "telemetry": 1}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "steering.telemetry"


def test_logprobs_in_openais_shapes_streamed_and_not(url, client, solo):
    want = solo.generate(PROMPTS[3], concept=PIRATE, flowtime=2.0, max_tokens=8, temperature=0.0, logprobs=3)
    r = chat(client, PROMPTS[3], {"concept": PIRATE}, max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content  # parsed by the official client
    assert len(content) == 8 and all(len(x.top_logprobs) == 3 for x in content)
    assert [x.logprob for x in content] == pytest.approx([x.logprob for x in want.logprobs], abs=1e-3)
    assert all(x.top_logprobs[0].logprob >= x.top_logprobs[1].logprob >= x.top_logprobs[2].logprob for x in content)
    streamed = chat(client, PROMPTS[3], {"concept": PIRATE}, max_tokens=8, logprobs=True, top_logprobs=3, stream=True)
    parts = [x for c in streamed if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [x.logprob for x in parts] == pytest.approx([x.logprob for x in content], abs=1e-3)  # another sequence
    assert chat(client, PROMPTS[3], max_tokens=2).choices[0].logprobs is None
    done = client.completions.create(model="flas", prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2,
                                      extra_body={"steering": {"concept": NOIR, "flowtime": 1.5}})
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6 and lp.text_offset[0] == 16
    for body, param in (({"logprobs": 1}, "logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                        ({"top_logprobs": 2}, "top_logprobs")):
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], **body},
                       timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
