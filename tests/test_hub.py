"""`--hf REPO`: a FLAS flow repository pulled from the hub, converted once and cached (issue 19),
against a hub on 127.0.0.1 (flas_cpp.testing.local_hub) that holds repositories laid out like the
released ones: a flow repository (flas-<name>.safetensors + config.json naming its base), the
base checkpoint, a GGUF repository of several quants, a gated one, a byte-level BPE one. The
commands run as a user runs them, in subprocesses with HF_ENDPOINT pointed at the fixture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flas_cpp import safetensors_io
from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing.local_hub import Hub, Repo

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
    # a flow of a family flas-cpp does not run, and a flow whose checkpoint does not fit its base
    other = d / "mistral"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    (other / "tokenizer.model").write_bytes(b"never downloaded")
    (other / "model.safetensors").write_bytes(b"never downloaded")
    other_flow = d / "other-flow"
    other_flow.mkdir()
    shutil.copy(flow_st, other_flow / "flas-mistral.safetensors")
    (other_flow / "config.json").write_text(json.dumps({**config, "model_id": "flas-testing/mistral-tiny"}))
    broken = d / "broken"
    broken.mkdir()
    refs, meta = safetensors_io.read_header(flow_st)
    safetensors_io.write(broken / "flas-broken.safetensors",
                         {n: ("F32", r.to_f32()[..., :-1] if n.endswith(".down_proj.weight") else r.to_f32())
                          for n, r in refs.items()}, meta)
    (broken / "config.json").write_text(json.dumps({**config, "model_id": BASE_REPO}))
    # a flow larger than huggingface_hub's 10 MB write chunk, so that part of a download reaches the
    # disk: padded with the rotary table the converter ignores (FLAS_SPEC.md section 6)
    large = d / "large"
    large.mkdir()
    pad = np.random.default_rng(0).standard_normal(3_500_000).astype(np.float32)
    safetensors_io.write(large / "flas-large.safetensors",
                         {**{n: ("F32", r.to_f32()) for n, r in refs.items()}, "rotary_emb.inv_freq": ("F32", pad)},
                         meta)
    (large / "config.json").write_text(json.dumps({**config, "model_id": BASE_REPO}))
    h = Hub()
    files = lambda p: {f.name: f for f in p.iterdir() if f.is_file()}  # noqa: E731
    h.repos.update({FLOW_REPO: Repo(files(flow_repo)), BASE_REPO: Repo(files(base_dir), sha="2" * 40),
                    GGUF_REPO: Repo(files(ggufs), sha="3" * 40),
                    "flas-ai/flas-gated": Repo(files(flow_repo), gated=True),
                    "flas-testing/bpe-tiny": Repo(files(bpe), sha="4" * 40),
                    "flas-testing/mistral-tiny": Repo(files(other), sha="6" * 40),
                    "flas-ai/flas-mistral": Repo(files(other_flow)),
                    "flas-ai/flas-broken": Repo(files(broken)),
                    "flas-ai/flas-large": Repo(files(large))})
    yield {"hub": h, "dir": d, "base_dir": base_dir, "flow_repo": flow_repo, "ggufs": ggufs, "large": large}
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
    # the manual path: download by hand, flas-convert base Q4_K_M, flas-convert flow (its default type)
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
    assert (cache / "flas-ai--flas-tiny" / ("1" * 40) / "flas-tiny-q5_k_s.gguf").is_file()
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
    assert newer.returncode == 0 and (cache / "flas-ai--flas-tiny" / ("5" * 40) / "flas-tiny-q5_k_s.gguf").is_file()


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
    flow = cache / "flas-ai--flas-tiny" / ("1" * 40) / "flas-tiny-q5_k_s.gguf"
    assert f"flow: {flow}" in pulled.stdout
    listed = convert("list")
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and len(lines) == 3 and lines[-1].startswith("2 files, ")
    row = next(line for line in lines if line.startswith(FLOW_REPO))
    assert row.split()[1:3] == ["1" * 12, "q5_k_s"] and row.endswith(str(flow))
    removed = convert("rm", FLOW_REPO)
    assert removed.returncode == 0 and removed.stdout.startswith(f"removed {FLOW_REPO}: ")
    assert not flow.exists() and convert("list").stdout.splitlines()[-1].startswith("1 file, ")
    again = convert("rm", FLOW_REPO)
    assert again.returncode == 2 and f"nothing of {FLOW_REPO} is cached; cached: {BASE_REPO}" in again.stderr


def pull(hub: dict, home: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("flas-convert"), "pull", *args], capture_output=True, text=True, timeout=300,
                          cwd=home, env=env or hub_env(hub, home), **kw)


def manual_flow(hub: dict, home: Path) -> bytes:
    """The flow GGUF as flas-convert flow writes it from the repository's file, by hand."""
    flow = home / "manual-flow.gguf"
    convert_flow(hub["flow_repo"] / "flas-tiny.safetensors", flow, base_config=hub["base_dir"] / "config.json",
                 progress=False)
    return flow.read_bytes()


def converted(home: Path) -> list[Path]:
    """Everything in the converted-model cache, temporary files included."""
    root = home / "cache" / "hub"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def test_a_download_cut_halfway_resumes_and_nothing_corrupt_is_used(hub, tmp_path):
    """The hub closes the connection 1 MB before the end of a 14 MB file: huggingface_hub asks for
    the rest only (from what it wrote, in its 10 MB chunks), and the whole file is converted."""
    h = hub["hub"]
    size = (hub["large"] / "flas-large.safetensors").stat().st_size
    h.release.set()  # the connection closes at once
    h.hold["flas-large.safetensors"] = size - 2**20
    h.ranges.clear()
    r = pull(hub, tmp_path, "flas-ai/flas-large", "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    assert r.returncode == 0, r.stderr
    assert "Trying to resume download" in r.stderr
    assert len(h.ranges) == 1 and h.ranges[0].startswith("flas-large.safetensors bytes=")
    assert 0 < int(h.ranges[0].split("=")[1].rstrip("-")) < size
    flow = tmp_path / "cache" / "hub" / "v1" / "flas-ai--flas-large" / ("1" * 40) / "flas-large-q5_k_s.gguf"
    manual = tmp_path / "manual-flow.gguf"
    convert_flow(hub["large"] / "flas-large.safetensors", manual, base_config=hub["base_dir"] / "config.json",
                 progress=False)
    assert flow.read_bytes() == manual.read_bytes()


def test_ctrl_c_during_a_download_then_the_next_run_resumes_it(hub, tmp_path):
    """Ctrl-C while a 14 MB download stalls past its first 10 MB: one line, no traceback, nothing
    converted; the next run asks the hub for the rest only, and the file it completes is whole."""
    import signal
    import time

    h = hub["hub"]
    size = (hub["large"] / "flas-large.safetensors").stat().st_size
    h.holding.clear()
    h.release.clear()
    h.hold["flas-large.safetensors"] = size - 2**20
    proc = subprocess.Popen([shutil.which("flas-convert"), "pull", "flas-ai/flas-large", "--hf-base",
                             f"{GGUF_REPO}:Q4_K_M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=hub_env(hub, tmp_path))
    blobs = tmp_path / "hf" / "hub" / "models--flas-ai--flas-large" / "blobs"
    try:
        assert h.holding.wait(120), "the download never started"
        deadline = time.monotonic() + 5  # less than huggingface_hub's 10 s read timeout
        while not any(p.stat().st_size for p in blobs.glob("*.flas-partial")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        h.release.set()
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().endswith("flas-convert pull: interrupted; the next run resumes the download where it stopped "
                                "(nothing half-converted is kept)")
    assert "Traceback" not in err
    got = [p.stat().st_size for p in blobs.glob("*.flas-partial")]
    assert len(got) == 1 and 0 < got[0] < size
    assert not any("flas-large" in p.name for p in converted(tmp_path))

    h.ranges.clear()
    again = pull(hub, tmp_path, "flas-ai/flas-large", "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    assert again.returncode == 0, again.stderr
    assert h.ranges == [f"flas-large.safetensors bytes={got[0]}-"]
    assert list(blobs.glob("*.flas-partial")) == []
    flow = tmp_path / "cache" / "hub" / "v1" / "flas-ai--flas-large" / ("1" * 40) / "flas-large-q5_k_s.gguf"
    manual = tmp_path / "manual-flow.gguf"
    convert_flow(hub["large"] / "flas-large.safetensors", manual, base_config=hub["base_dir"] / "config.json",
                 progress=False)
    assert flow.read_bytes() == manual.read_bytes()
    # huggingface_hub finds the file where it would have put it: offline, nothing is downloaded again
    n = len(h.requests)
    offline = pull(hub, tmp_path, "flas-ai/flas-large", "--hf-base", f"{GGUF_REPO}:Q4_K_M",
                   env={**hub_env(hub, tmp_path), "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert h.requests[n:] == []


def test_a_download_that_does_not_match_its_checksum_is_deleted(hub, tmp_path):
    h = hub["hub"]
    h.corrupt.add("flas-tiny.safetensors")
    try:
        bad = pull(hub, tmp_path, FLOW_REPO, "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    finally:
        h.corrupt.discard("flas-tiny.safetensors")
    assert bad.returncode == 2, bad.stdout
    assert (f"{FLOW_REPO}/flas-tiny.safetensors: the downloaded file does not match the hub's checksum (sha256 "
            in bad.stderr) and "it was deleted, run again to download it anew" in bad.stderr
    blobs = tmp_path / "hf" / "hub" / "models--flas-ai--flas-tiny" / "blobs"
    assert all(p.stat().st_size < 1000 for p in blobs.iterdir())  # config.json only: the corrupt file is gone
    assert not any(p.name.startswith("flas-tiny") for p in converted(tmp_path))

    good = pull(hub, tmp_path, FLOW_REPO, "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    assert good.returncode == 0, good.stderr
    flow = tmp_path / "cache" / "hub" / "v1" / "flas-ai--flas-tiny" / ("1" * 40) / "flas-tiny-q5_k_s.gguf"
    assert flow.read_bytes() == manual_flow(hub, tmp_path)


def test_a_base_family_flas_cpp_does_not_run_stops_before_any_weights(hub, tmp_path):
    h = hub["hub"]
    n = len(h.requests)
    r = pull(hub, tmp_path, "flas-ai/flas-mistral")
    assert r.returncode == 2, r.stdout
    assert ("flas-ai/flas-mistral steers flas-testing/mistral-tiny, which flas-cpp cannot run: " in r.stderr
            and "base model_type 'mistral' is not supported; flas-cpp converts flows of gemma2, " in r.stderr)
    got = [q for q in h.requests[n:] if "/resolve/" in q and q.startswith("GET")]
    assert sorted(got) == sorted([f"GET /flas-ai/flas-mistral/resolve/{'1' * 40}/config.json",
                                  f"GET /flas-testing/mistral-tiny/resolve/{'6' * 40}/config.json"])


def test_a_failed_conversion_leaves_nothing_in_the_cache(hub, tmp_path):
    r = pull(hub, tmp_path, "flas-ai/flas-broken", "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    assert r.returncode == 2, r.stdout
    assert "blocks.0.down_proj.weight" in r.stderr and "Traceback" not in r.stderr
    assert not any("broken" in str(p) for p in converted(tmp_path))


def test_no_network_names_the_endpoint_and_what_is_cached(hub, tmp_path):
    ok = pull(hub, tmp_path, FLOW_REPO, "--hf-base", f"{GGUF_REPO}:Q4_K_M")
    assert ok.returncode == 0, ok.stderr
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {**hub_env(hub, tmp_path), "HF_ENDPOINT": dead}
    r = pull(hub, tmp_path, FLOW_REPO, env=env)
    assert r.returncode == 2, r.stdout
    assert f"cannot reach {dead} for {FLOW_REPO} (" in r.stderr
    assert (f"HF_HUB_OFFLINE=1 uses only what is cached (converted models cached: {FLOW_REPO})"
            in r.stderr)
    offline = pull(hub, tmp_path, FLOW_REPO, "--hf-base", f"{GGUF_REPO}:Q4_K_M", env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr


def test_not_enough_disk_space_is_said_before_any_download(hub, tmp_path):
    """shutil.disk_usage reports 1 MB free: the tiny models' downloads (6 MB) and conversions need more."""
    code = ("import collections, shutil, sys\n"
            "shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(10**12, 0, 10**6)\n"
            "from flas_cpp.convert.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    h = hub["hub"]
    n = len(h.requests)
    r = subprocess.run(["python3", "-c", code, "pull", FLOW_REPO, "--outtype", "f32"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path, env=hub_env(hub, tmp_path))
    assert r.returncode == 2, r.stdout
    assert f"not enough disk space on {tmp_path}" in r.stderr
    need = float(r.stderr.split("conversions need about ")[1].split(" MB")[0])
    assert 6.0 < need < 20.0 and ", 1.0 MB are free; free some space" in r.stderr
    assert not any(q.endswith(".safetensors") for q in h.requests[n:])


def test_a_file_the_repository_lacks_is_named_with_what_it_has(hub, tmp_path):
    code = ("import sys\nfrom flas_cpp import hub\n"
            "try:\n"
            f"    hub.download({GGUF_REPO!r}, 'gemma-2-tiny-Q5_K_M.gguf', '3' * 40)\n"
            "except hub.HubError as e:\n    print(e)\n")
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=hub_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{GGUF_REPO} has no file gemma-2-tiny-Q5_K_M.gguf; it has: gemma-2-tiny-Q4_K_M.gguf, "
                                "gemma-2-tiny-Q8_0.gguf")
