"""Every bad input gets one clear line naming the problem and the fix; nothing is left behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flas_cpp import safetensors_io
from flas_cpp.convert import ConversionError, cli, common, convert_flow
from flas_cpp.testing import make_models as mm


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def assert_refused(capsys, out, expected: str, *argv: str) -> None:
    existed = out.exists()
    before = out.read_bytes() if existed else None
    rc, err = run(capsys, *argv, "-o", str(out), "--no-progress")
    assert rc == 2, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert out.exists() == existed and (before is None or out.read_bytes() == before)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def clone(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, **changes):
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def edit_tensors(shard, drop=(), add=None, replace=None):
    refs, meta = safetensors_io.read_header(shard)
    tensors = {n: (r.dtype, np.array(r.raw())) for n, r in refs.items() if n not in drop}
    tensors.update(add or {})
    tensors.update(replace or {})
    safetensors_io.write(shard, tensors, meta)


def shard_with(base_dir, name):
    return next(p for p in base_dir.glob("*.safetensors") if name in safetensors_io.read_header(p)[0])


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d / "model.gguf"


# ---- base ------------------------------------------------------------------------------------

def test_base_missing_directory(capsys, out, tmp_path):
    assert_refused(capsys, out, "checkpoint directory not found", "base", str(tmp_path / "nope"))


def test_base_missing_config_and_tokenizer(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    (d / "tokenizer.model").unlink()
    assert_refused(capsys, out, "tokenizer.model not found", "base", str(d))
    (d / "config.json").unlink()
    assert_refused(capsys, out, "config.json not found", "base", str(d))


def test_base_not_a_gemma2_config(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    edit_json(d / "config.json", model_type="mistral", architectures=["MistralForCausalLM"])
    assert_refused(capsys, out, "not a config flas-convert base knows (model_type 'mistral'", "base", str(d))
    edit_json(d / "config.json", model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"])
    assert_refused(capsys, out, "a multimodal Gemma-3 config without text_config", "base", str(d))


def test_base_tensor_with_wrong_shape(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    name = "model.layers.1.mlp.up_proj.weight"
    edit_tensors(shard_with(d, name), replace={name: ("F32", np.zeros((100, 128), np.float32))})
    assert_refused(capsys, out, f"tensor {name!r} has shape [100, 128] but config.json implies [384, 128]", "base", str(d))


def test_base_unknown_and_missing_tensors(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    shard = shard_with(d, "model.norm.weight")
    edit_tensors(shard, add={"model.vision_tower.weight": ("F32", np.zeros(4, np.float32))})
    (d / "model.safetensors.index.json").unlink()
    assert_refused(capsys, out, "unknown tensor 'model.vision_tower.weight'", "base", str(d))
    edit_tensors(shard, drop=("model.vision_tower.weight", "model.norm.weight"))
    assert_refused(capsys, out, "missing tensor 'model.norm.weight'", "base", str(d))


def test_base_config_contradicting_the_weights(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    edit_json(d / "config.json", num_hidden_layers=5)
    assert_refused(capsys, out, "not part of a Gemma-2 model with 5 layers", "base", str(d))
    edit_json(d / "config.json", num_hidden_layers=6, vocab_size=500)
    assert_refused(capsys, out, "tokenizer.model has 1000 pieces but config.json vocab_size is 500", "base", str(d))
    edit_json(d / "config.json", vocab_size=1000, query_pre_attn_scalar=64)
    assert_refused(capsys, out, "query_pre_attn_scalar 64 != head_dim 32", "base", str(d))


def test_base_index_naming_a_missing_shard_and_a_damaged_file(capsys, out, tiny, tmp_path):
    d = clone(tiny[0], tmp_path / "b")
    shards = sorted(d.glob("model-*.safetensors"))
    shards[1].unlink()
    assert_refused(capsys, out, f"safetensors file not found: {shards[1]}", "base", str(d))
    shards[1].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert_refused(capsys, out, "header is not valid JSON", "base", str(d))


def test_base_unknown_outtype(capsys, out, tiny):
    assert_refused(capsys, out, "unknown --outtype 'q3'; choose one of: f32, f16, bf16, q8_0, Q4_0", "base",
                   str(tiny[0]), "--outtype", "q3")


def test_existing_output_needs_force(capsys, out, tiny):
    out.write_bytes(b"precious")
    assert_refused(capsys, out, "output file exists", "base", str(tiny[0]))
    rc, _ = run(capsys, "base", str(tiny[0]), "-o", str(out), "--force", "--no-progress")
    assert rc == 0 and out.read_bytes()[:4] == b"GGUF"


def test_dry_run_writes_nothing(capsys, out, tiny):
    rc = cli.main(["base", str(tiny[0]), "-o", str(out), "--dry-run", "--outtype", "Q4_K_M"])
    printed = capsys.readouterr().out
    assert rc == 0 and "would write" in printed and "68 tensors" in printed and "Q4_K_M" in printed
    assert list(out.parent.iterdir()) == []


def test_interrupted_conversion_leaves_nothing(capsys, out, tiny, monkeypatch):
    calls = []
    real_encode = common.encode

    def encode_then_interrupt(x, qtype):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_encode(x, qtype)

    monkeypatch.setattr(common, "encode", encode_then_interrupt)
    rc, err = run(capsys, "base", str(tiny[0]), "-o", str(out), "--outtype", "Q4_K_M", "--no-progress")
    assert rc == 130 and "interrupted; no output written" in err
    assert list(out.parent.iterdir()) == []


# ---- flow ------------------------------------------------------------------------------------

@pytest.fixture
def flow(tiny, tmp_path):
    """A private copy of the tiny flow checkpoint and the base config to convert it with."""
    d = clone(tiny[1].parent, tmp_path / "flow")
    return d / "flow.safetensors", str(tiny[0] / "config.json")


def test_flow_missing_files(capsys, out, flow, tmp_path):
    path, base_cfg = flow
    assert_refused(capsys, out, "safetensors file not found", "flow", str(tmp_path / "x.safetensors"))
    (path.parent / "config.json").unlink()
    assert_refused(capsys, out, "flow config not found", "flow", str(path), "--base-config", base_cfg)


def test_flow_unknown_base_without_base_config(capsys, out, flow):
    assert_refused(capsys, out, "is not a known base model nor a local checkpoint directory; pass --base-config", "flow", str(flow[0]))


def test_flow_base_config_of_an_unsupported_family(capsys, out, flow, tmp_path):
    bad = tmp_path / "llama.json"
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 128}))
    bad.write_text(json.dumps({"model_type": "mistral", "hidden_size": 128}))
    assert_refused(capsys, out, "base model_type 'mistral' is not supported; flas-cpp converts flows of gemma2, gemma3, "
                   "gemma3_text, llama, qwen3 bases", "flow", str(flow[0]), "--base-config", str(bad))


def test_flow_weights_of_another_base(capsys, out, flow):
    edit_json(flow[0].parent / "config.json", model_id="google/gemma-2-2b-it")
    assert_refused(capsys, out, "tensor 'time_embed.mlp.0.weight' has shape [128, 128] but the base model "
                   "(google/gemma-2-2b-it: hidden 2304", "flow", str(flow[0]))


def test_flow_unknown_and_missing_tensors(capsys, out, flow, tiny):
    path, base_cfg = flow
    edit_tensors(path, add={"blocks.0.lora_A": ("F32", np.zeros(4, np.float32))})
    assert_refused(capsys, out, "unknown tensor 'blocks.0.lora_A'", "flow", str(path), "--base-config", base_cfg)
    edit_tensors(path, drop=("blocks.0.lora_A", "blocks.0.up_proj.weight"))
    assert_refused(capsys, out, "has part of the mlp group but lacks 'blocks.0.up_proj.weight'", "flow", str(path),
                   "--base-config", base_cfg)
    shutil.copy(tiny[1], path)
    edit_tensors(path, drop=("time_embed.mlp.2.bias",))
    assert_refused(capsys, out, "missing tensor 'time_embed.mlp.2.bias'", "flow", str(path), "--base-config", base_cfg)


def test_flow_config_contradicting_the_weights(capsys, out, flow):
    path, base_cfg = flow
    cfg = path.parent / "config.json"
    edit_json(cfg, num_blocks=2)
    assert_refused(capsys, out, "holds blocks [0] but config.json says num_blocks = 2", "flow", str(path),
                   "--base-config", base_cfg)
    edit_json(cfg, num_blocks=1, disable_self_attn=True)
    assert_refused(capsys, out, "config.json says disable_self_attn: true but flow.safetensors has the self_attn",
                   "flow", str(path), "--base-config", base_cfg)
    edit_json(cfg, disable_self_attn=False, layer=6)
    assert_refused(capsys, out, "layer 6 is outside the base model's 6 layers", "flow", str(path), "--base-config", base_cfg)
    edit_json(cfg, layer="four")
    assert_refused(capsys, out, "'layer' should be int, got 'four'", "flow", str(path), "--base-config", base_cfg)
    obj = json.loads(cfg.read_text())
    del obj["layer"]
    cfg.write_text(json.dumps(obj))
    assert_refused(capsys, out, "flow config lacks 'layer'", "flow", str(path), "--base-config", base_cfg)


def test_flow_ablated_group_missing_but_config_says_enabled(capsys, out, tiny, tmp_path):
    path = mm.write_flow(tmp_path / "abl", disable=frozenset({"mlp"}), quiet=True)
    edit_json(path.parent / "config.json", disable_mlp=False)
    assert_refused(capsys, out, "disable_mlp: false but flow.safetensors lacks the mlp tensors", "flow", str(path),
                   "--base-config", str(tiny[0] / "config.json"))


def test_flow_unknown_outtype(capsys, out, flow):
    with pytest.raises(SystemExit) as e:  # argparse's choices: usage line plus "invalid choice"
        cli.main(["flow", str(flow[0]), "-o", str(out), "--outtype", "q3_k"])
    assert e.value.code == 2 and "invalid choice: 'q3_k'" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="unknown --outtype 'q3_k' for a flow"):
        convert_flow(flow[0], out, base_config=flow[1], outtype="q3_k")
    assert not out.exists()


def test_terminated_conversion_leaves_nothing(tiny, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    out.mkdir()
    # a conversion slowed down so that SIGTERM lands mid-write
    code = ("import time, sys; from flas_cpp.convert import cli, common\n"
            "real = common.encode\n"
            "def slow(x, q):\n    time.sleep(0.2); return real(x, q)\n"
            "common.encode = slow\n"
            f"sys.exit(cli.main(['base', {str(tiny[0])!r}, '-o', {str(out / 'm.gguf')!r}, '--no-progress']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not list(out.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.iterdir()), "the conversion never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted; no output written" in err
    assert list(out.iterdir()) == []
