"""The web page of flas-server in headless Chromium (Debian's `chromium`), driven over the
DevTools protocol: load it, generate, wait until both columns have text, compare them, and keep
a screenshot (FLAS_TEST_ARTIFACTS, default tests/artifacts/)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websocket

from conftest import convert_tiny_flow
from test_server import free_port, server

ARTIFACTS = Path(os.environ.get("FLAS_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Page:
    """One browser tab over the DevTools protocol: evaluate JavaScript, take screenshots."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("the page test needs Chromium: apt-get install chromium (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--remote-debugging-port={port}", "--window-size=1280,860",
                             f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/json/version", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def open_page(devtools_port: int, url: str) -> Page:
    target = httpx.put(f"http://127.0.0.1:{devtools_port}/json/new?{url}").json()
    return Page(target["webSocketDebuggerUrl"])


def test_the_page_streams_baseline_and_steered_side_by_side(browser, tiny, tiny_base_f32, tmp_path_factory):
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("page") / "flow.gguf", "bf16")
    with server(tiny_base_f32, flow, "--parallel", "2", "--n-ctx", "1024") as url:
        page = open_page(browser, url + "/")
        page.wait_for("document.getElementById('status').textContent.includes('sequences')")
        page.js("document.getElementById('max-tokens').value = 40; document.getElementById('run').click(); true")
        done = "document.querySelectorAll('.col .speed')"
        page.wait_for(f"[...{done}].every(e => e.textContent.includes('tok/s'))")
        base, steered = page.js("[...document.querySelectorAll('.col .text')].map(e => e.textContent)")
        assert base and steered and base != steered
        assert page.js(f"[...{done}].map(e => e.textContent).join(' ')").count("40 tokens") == 2
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        (ARTIFACTS / "server-page.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

        # the chat tab: two turns of one conversation, with its own concept
        page.js("document.getElementById('tab-chat').click(); true")
        # greedy: a sampled first token of the random model can be end-of-turn, an empty (and correct) reply
        page.js("document.getElementById('chat-temperature').value = 0; true")
        for text in ("Hello!", "And then?"):
            page.js(f"document.getElementById('chat-input').value = {json.dumps(text)};"
                    "document.getElementById('chat-max').value = 12; document.getElementById('chat-send').click(); true")
            page.wait_for("!document.getElementById('chat-send').disabled")
        turns = page.js("[...document.querySelectorAll('#chat-log .msg')].map(e => e.textContent)")
        assert len(turns) == 4 and turns[0] == "youHello!" and turns[1].startswith("model") and len(turns[1]) > 5
        (ARTIFACTS / "server-page-chat.png").write_bytes(
            base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))


def test_the_page_asks_for_the_api_key_and_keeps_it(browser, tiny, tiny_base_f32, tmp_path_factory):
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("page-key") / "flow.gguf", "bf16")
    with server(tiny_base_f32, flow, "--parallel", "2", "--n-ctx", "1024", env={"FLAS_API_KEY": "k3y"}) as url:
        page = open_page(browser, url + "/")
        # /v1/props is behind the key too: the page asks for it before it knows the model
        page.wait_for("document.getElementById('status').textContent.includes('API key')")
        assert page.js("!document.getElementById('key-box').classList.contains('hidden')")
        page.js("document.getElementById('max-tokens').value = 4; document.getElementById('run').click(); true")
        page.wait_for("document.querySelector('#col-base .text').classList.contains('error')")
        assert "API key" in page.js("document.querySelector('#col-base .text').textContent")
        page.js("const k = document.getElementById('api-key'); k.value = 'k3y'; k.dispatchEvent(new Event('change'))")
        page.wait_for("document.getElementById('status').textContent.includes('sequences')")
        page.js("document.getElementById('run').click(); true")
        page.wait_for("[...document.querySelectorAll('.col .speed')].every(e => e.textContent.includes('tok/s'))")
        assert page.js("localStorage.getItem('flas-api-key')") == "k3y"


def test_moving_the_slider_while_it_writes_changes_the_steered_text_from_a_marker(browser, tiny, tiny_base_f32,
                                                                                   tmp_path_factory):
    """The slider moved after the 8th steered token (as a person would, while the text streams):
    a marker appears where the change took effect, the telemetry shows the new flowtime from
    there, the text before the marker is the unchanged run's and the text after it is not."""
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("page-live") / "flow.gguf", "bf16")
    with server(tiny_base_f32, flow, "--parallel", "2", "--n-ctx", "1024") as url:
        page = open_page(browser, url + "/")
        page.wait_for("document.getElementById('status').textContent.includes('sequences')")
        page.js("document.getElementById('max-tokens').value = 300; document.getElementById('temperature').value = 0.8;"
                "true")
        run = ("document.getElementById('run').click(); true")
        done = "!document.getElementById('run').disabled && window.flasTelemetry.length > 0"
        page.js(run)
        page.wait_for(done)
        unchanged = page.js("document.querySelector('#col-steered .text').textContent")
        page.js("""window.moved = false;
            document.getElementById('col-steered').addEventListener('flas-token', (e) => {
              if (!window.moved && e.detail.tokens >= 8) {
                window.moved = true;
                const s = document.getElementById('flowtime'); s.value = 0.5;
                s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));
              }
            }); true""")
        page.js(run)
        page.wait_for(done + " && window.moved")
        assert page.js("document.querySelector('#col-steered .marker') !== null"), page.js(
            "JSON.stringify({n: window.flasTelemetry.length, id: live.id, html: document.querySelector('#col-steered').innerHTML.slice(0, 3000)})")
        tel = page.js("window.flasTelemetry")
        T = [t["flowtime"] for t in tel]
        at = T.index(0.5)
        assert at >= 8 and set(T[:at]) == {2.0} and set(T[at:]) == {0.5}
        before = page.js("""(() => { const m = document.querySelector('#col-steered .marker'); let t = '';
            for (let n = m.previousSibling; n; n = n.previousSibling) t = n.textContent + t; return t; })()""")
        after = page.js("""(() => { const m = document.querySelector('#col-steered .marker'); let t = '';
            for (let n = m.nextSibling; n; n = n.nextSibling) t += n.textContent; return t; })()""")
        assert unchanged.startswith(before) and after and not unchanged[len(before):].startswith(after)
        assert "T = 0.5" in page.js("document.querySelector('#col-steered h2').textContent")
        assert page.js("[...document.querySelectorAll('#col-steered .text span[data-moved]')]"
                       ".some(s => s.style.background)")  # shaded by displacement
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "server-page-live.png").write_bytes(
            base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
