"""The flow that ships for the real Gemma-3 270M (flas_cpp/flows/, made by flas-train): on
held-out prompts it never trained on, greedy text steered at T = 2 is in the concept's language
where the unsteered base's is not. A behavioural test; docs/QUALITY.md has the full rates."""

from __future__ import annotations

import base64

import pytest

from conftest import require_real_model
from flas_cpp import FlasModel
from flas_cpp.bundled import REAL_FLOW, real_models
from flas_cpp.train.judges import JUDGES
from test_page import ARTIFACTS, browser, open_page  # noqa: F401 (browser: a fixture)
from test_server import serve

require_real_model()

# the first 10 held-out prompts of ../shared/data/concepts_prompts.json, as measured in
# docs/QUALITY.md (flas-train's built-in prompts are other sentences)
PROMPTS = ["Tell me about your day.", "How do I make a cup of tea?", "Explain what a database index is.",
           "Give me three tips for learning a new language.", "What should I pack for a weekend trip?",
           "Describe how a bicycle works.", "Write a short note thanking a colleague.", "Why is the sky blue?",
           "Suggest a name for a small bakery.", "How can I improve my sleep?"]
STEERED = {"Write in French": "fr", "Write in Spanish": "es", "Write in German": "de", "Write in Italian": "it"}


@pytest.fixture(scope="module")
def model():
    base, flow = real_models()
    assert flow == REAL_FLOW and flow.stat().st_size <= 20 * 2**20  # the bound for a shipped flow
    # one sequence, exact: the greedy text does not depend on which requests share a batch
    with FlasModel(base, flow, n_seq=1, n_ctx=1024, exact=True) as m:
        yield m


def texts(m: FlasModel, concept: str | None, flowtime: float) -> list[str]:
    return [m.generate(prompt=p, concept=concept, flowtime=flowtime, temperature=0.0, max_tokens=32,
                       stop=["\n\n"]).text for p in PROMPTS]


def test_the_shipped_flow_steers_held_out_prompts_into_its_languages(model):
    plain = texts(model, None, 0.0)
    for concept, code in STEERED.items():
        judge = JUDGES[code]
        steered = texts(model, concept, 2.0)
        assert sum(map(judge, plain)) == 0, (concept, plain)
        assert sum(map(judge, steered)) >= 6, (concept, steered)  # of 10: the 60 % (measured: 7-9)


def test_the_page_shows_the_real_model_steered_beside_its_baseline(browser):  # noqa: F811
    """flas-server --real in headless Chromium: the steered column is German, the baseline is not;
    the screenshot is README's (docs/server-page.png is a copy of ARTIFACTS/server-page-real.png)."""
    with serve("--real", "--parallel", "1", "--exact", "--n-ctx", "1024") as url:  # one sequence: deterministic
        page = open_page(browser, url + "/")
        page.wait_for("document.getElementById('status').textContent.includes('sequences')")
        page.js("document.getElementById('concept').value = 'Write in German'; "
                "document.getElementById('max-tokens').value = 24; document.getElementById('run').click(); true")
        page.wait_for("[...document.querySelectorAll('.col .speed')].every(e => e.textContent.includes('tok/s'))")
        plain, steered = page.js("[...document.querySelectorAll('.col .text')].map(e => e.textContent)")
        assert JUDGES["de"](steered) and not JUDGES["de"](plain), (plain, steered)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "server-page-real.png").write_bytes(
            base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))


def test_flas_demo_real_shows_french_beside_the_english_baseline(tmp_path):
    """README's first command: `flas-demo --real` on the shipped flow; its steered column (the
    right-hand side of each row) is French and its baseline is not."""
    import shutil
    import subprocess

    run = subprocess.run([shutil.which("flas-demo"), "--real", "--max-tokens", "24"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "steered: 'Write in French', T = 2" in run.stdout
    rows = [line.split(" | ", 1) for line in run.stdout.splitlines()[5:] if " | " in line]
    plain, steered = " ".join(r[0] for r in rows), " ".join(r[1] for r in rows)
    assert JUDGES["fr"](steered) and not JUDGES["fr"](plain), run.stdout
