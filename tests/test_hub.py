"""`--hf REPO`: a FLAS flow repository pulled from the hub, converted once and cached (issue 19),
against a hub on 127.0.0.1 (tests/hub_fixture.py) that holds repositories laid out like the
released ones: a flow repository (flas-<name>.safetensors + config.json naming its base), the
base checkpoint, a GGUF repository of several quants, a gated one, a byte-level BPE one. The
commands run as a user runs them, in subprocesses with HF_ENDPOINT pointed at the fixture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flas_cpp.convert import convert_base, convert_flow
from hub_fixture import Hub, Repo

FLOW_REPO, BASE_REPO, GGUF_REPO = "flas-ai/flas-tiny", "flas-testing/gemma-2-tiny", "flas-testing/gemma-2-tiny-GGUF"


@pytest.fixture(scope="module")
def hub(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("hub")
    base_dir, flow_st = tiny
    flow_repo = d / "flow"
    flow_repo.mkdir()
    shutil.copy(flow_st, flow_repo / "flas-tiny.safetensors")
    config = json.loads((flow_st.parent / "config.json").read_text())
    (flow_repo / "config.json").write_text(json.dumps({**config, "model_id": BASE_REPO}))
    ggufs = d / "gguf"
    ggufs.mkdir()
    for quant in ("Q4_K_M", "Q8_0"):
        convert_base(base_dir, ggufs / f"gemma-2-tiny-{quant}.gguf", quant, progress=False)
    bpe = d / "bpe"
    bpe.mkdir()
    for f in base_dir.iterdir():
        if f.is_file() and f.name != "tokenizer.model":
            shutil.copy(f, bpe / f.name)
    (bpe / "tokenizer.json").write_text("{}")
    h = Hub()
    files = lambda p: {f.name: f for f in p.iterdir() if f.is_file()}  # noqa: E731
    h.repos.update({FLOW_REPO: Repo(files(flow_repo)), BASE_REPO: Repo(files(base_dir), sha="2" * 40),
                    GGUF_REPO: Repo(files(ggufs), sha="3" * 40),
                    "flas-ai/flas-gated": Repo(files(flow_repo), gated=True),
                    "flas-testing/bpe-tiny": Repo(files(bpe), sha="4" * 40)})
    yield {"hub": h, "dir": d, "base_dir": base_dir, "flow_repo": flow_repo, "ggufs": ggufs}
    h.close()


def hub_env(hub: dict, home: Path) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub["hub"].url, "HF_HOME": str(home / "hf"),
           "FLAS_CPP_CACHE": str(home / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    return env


def run(hub: dict, home: Path, *args: str, offline: bool = False, token: str | None = None):
    env = hub_env(hub, home)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([shutil.which("flas-demo"), *args, "--max-tokens", "12"], capture_output=True, text=True,
                          timeout=300, cwd=home, env=env)


def columns(stdout: str) -> list[str]:
    """flas-demo's two columns (what was generated), without the paths and timings."""
    return [line for line in stdout.splitlines() if "|" in line and "tok/s" not in line and "prefill" not in line]


def test_hf_pulls_converts_and_starts_from_the_cache(hub, tmp_path):
    # the manual path: download by hand, flas-convert base Q4_K_M, flas-convert flow (default q4_k_m)
    base, flow = tmp_path / "base.gguf", tmp_path / "flow.gguf"
    convert_base(hub["base_dir"], base, "Q4_K_M", progress=False)
    convert_flow(hub["flow_repo"] / "flas-tiny.safetensors", flow, base_config=hub["base_dir"] / "config.json",
                 progress=False)
    manual = run(hub, tmp_path, "--base", str(base), "--flow", str(flow))
    assert manual.returncode == 0, manual.stderr

    requests = hub["hub"].requests
    first = run(hub, tmp_path, "--hf", FLOW_REPO)
    assert first.returncode == 0, first.stderr
    assert columns(first.stdout) == columns(manual.stdout)
    cache = tmp_path / "cache" / "hub" / "v1"
    assert (cache / "flas-ai--flas-tiny" / ("1" * 40) / "flas-tiny-q4_k_m.gguf").is_file()
    assert (cache / "flas-testing--gemma-2-tiny" / ("2" * 40) / "base-Q4_K_M.gguf").is_file()

    n = len(requests)
    again = run(hub, tmp_path, "--hf", FLOW_REPO)  # the network up: the two revision checks, nothing more
    assert again.returncode == 0 and columns(again.stdout) == columns(manual.stdout)
    assert sorted(requests[n:]) == sorted([f"GET /api/models/{BASE_REPO}", f"GET /api/models/{FLOW_REPO}"])

    n = len(requests)
    offline = run(hub, tmp_path, "--hf", FLOW_REPO, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert columns(offline.stdout) == columns(manual.stdout) and requests[n:] == []

    hub["hub"].repos[FLOW_REPO].sha = "5" * 40  # a new upstream commit converts again
    try:
        newer = run(hub, tmp_path, "--hf", FLOW_REPO)
    finally:
        hub["hub"].repos[FLOW_REPO].sha = "1" * 40
    assert newer.returncode == 0 and (cache / "flas-ai--flas-tiny" / ("5" * 40) / "flas-tiny-q4_k_m.gguf").is_file()


def test_hf_base_picks_the_quant_of_a_gguf_repository(hub, tmp_path):
    r = run(hub, tmp_path, "--hf", FLOW_REPO, "--hf-base", f"{GGUF_REPO}:q8_0")
    assert r.returncode == 0, r.stderr
    assert "gemma-2-tiny-Q8_0.gguf" in r.stdout
    r = run(hub, tmp_path, "--hf", FLOW_REPO, "--hf-base", f"{GGUF_REPO}:Q3_K_S")
    assert r.returncode == 2
    assert (f"{GGUF_REPO} has no Q3_K_S GGUF; it has: gemma-2-tiny-Q4_K_M.gguf, gemma-2-tiny-Q8_0.gguf"
            in r.stderr)


def test_from_pretrained(hub, tmp_path):
    code = ("from flas_cpp import FlasModel\n"
            f"m = FlasModel.from_pretrained({FLOW_REPO!r}, base={GGUF_REPO!r}, n_ctx=256)\n"
            "print(m.flow_info['family'], m.generate('Hi', flowtime=0.0, temperature=0.0, max_tokens=4).tokens)")
    env = hub_env(hub, tmp_path)
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gemma2 [")


@pytest.mark.parametrize("args, offline, token, message", [
    (["--hf", "flas-ai/flas-gated"], False, None,
     "flas-ai/flas-gated is gated: accept its license at {url}/flas-ai/flas-gated with your account, then set HF_TOKEN"),
    (["--hf", "flas-ai/no-such-flow"], False, None, "no repository flas-ai/no-such-flow on {url}"),
    (["--hf", FLOW_REPO, "--hf-base", "flas-testing/bpe-tiny"], False, None,
     "only llama.cpp's convert_hf_to_gguf.py converts; name a GGUF repository instead: --hf-base "
     "<owner>/bpe-tiny-GGUF:Q4_K_M"),
    (["--hf", FLOW_REPO], True, None, "HF_HUB_OFFLINE is set and nothing of flas-ai/flas-tiny is cached"),
    (["--hf", "flas-ai/flas-gated", "--base", "x.gguf", "--flow", "y.gguf"], False, None,
     "--real, --hf and --base/--flow each name the models: give one of them"),
])
def test_bad_situations_say_what_to_do(hub, tmp_path, args, offline, token, message):
    r = run(hub, tmp_path, *args, offline=offline, token=token)
    assert r.returncode == 2, r.stdout
    assert message.format(url=hub["hub"].url) in r.stderr
    assert "Traceback" not in r.stderr


def test_a_gated_repository_with_a_token(hub, tmp_path):
    r = run(hub, tmp_path, "--hf", "flas-ai/flas-gated", "--hf-base", f"{GGUF_REPO}:Q4_K_M", token="hf_test")
    assert r.returncode == 0, r.stderr


def test_hf_in_the_server_and_the_chat(hub, tmp_path):
    """flas-server --hf with the official openai client, and flas-chat --hf in a terminal: the
    same text as FlasModel on the files converted by hand."""
    import pexpect
    from openai import OpenAI

    from flas_cpp import FlasModel
    from test_server import serve

    base, flow = tmp_path / "base.gguf", tmp_path / "flow.gguf"
    convert_base(hub["base_dir"], base, "Q4_K_M", progress=False)
    convert_flow(hub["flow_repo"] / "flas-tiny.safetensors", flow, base_config=hub["base_dir"] / "config.json",
                 progress=False)
    with FlasModel(base, flow, n_ctx=512) as m:
        want = m.generate("Hello there", concept="Talk like a pirate", flowtime=2.0, temperature=0.0, max_tokens=8).text

    with serve("--hf", FLOW_REPO, "--parallel", "1", "--n-ctx", "512", env=hub_env(hub, tmp_path)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="flas", messages=[{"role": "user", "content": "Hello there"}],
                                           max_tokens=8, temperature=0,
                                           extra_body={"steering": {"concept": "Talk like a pirate", "flowtime": 2.0}})
        assert r.choices[0].message.content == want

    chat = pexpect.spawn(shutil.which("flas-chat"), ["--hf", FLOW_REPO, "--max-tokens", "8", "--temp", "0",
                                                     "--n-ctx", "512", "--concept", "Talk like a pirate"],
                         encoding="utf-8", timeout=120, cwd=str(tmp_path), env=hub_env(hub, tmp_path))
    try:
        chat.expect("you> ")
        chat.sendline("Hello there")
        chat.expect("model> ")
        chat.expect(r"\r\nyou> ")
        assert chat.before.replace("\r\n", "\n") == want
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


def test_the_model_manager_lists_and_removes(hub, tmp_path):
    def convert(*args):
        return subprocess.run([shutil.which("flas-convert"), *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=hub_env(hub, tmp_path))

    pulled = convert("pull", FLOW_REPO)
    assert pulled.returncode == 0, pulled.stderr
    cache = tmp_path / "cache" / "hub" / "v1"
    flow = cache / "flas-ai--flas-tiny" / ("1" * 40) / "flas-tiny-q4_k_m.gguf"
    assert f"flow: {flow}" in pulled.stdout
    listed = convert("list")
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and len(lines) == 3 and lines[-1].startswith("2 files, ")
    row = next(line for line in lines if line.startswith(FLOW_REPO))
    assert row.split()[1:3] == ["1" * 12, "q4_k_m"] and row.endswith(str(flow))
    removed = convert("rm", FLOW_REPO)
    assert removed.returncode == 0 and removed.stdout.startswith(f"removed {FLOW_REPO}: ")
    assert not flow.exists() and convert("list").stdout.splitlines()[-1].startswith("1 file, ")
    again = convert("rm", FLOW_REPO)
    assert again.returncode == 2 and f"nothing of {FLOW_REPO} is cached; cached: {BASE_REPO}" in again.stderr
