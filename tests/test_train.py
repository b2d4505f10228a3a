"""flas-train on the tiny test model (seconds): what it writes loads and steers, its GGUF and its
safetensors steer identically (the independent numpy reference reads the safetensors), a seed
fixes the result, a resumed run equals an uninterrupted one, and bad arguments are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flow_reference import FlowReference
from gguf import GGUFWriter

from flas_cpp import FlasModel
from flas_cpp.train import Concept, Recipe, train
from flas_cpp.train import cli
from flas_cpp.train import trainer as trainer_module

PROMPTS = ["Tell me about your day.", "Why is the sky blue?", "Write a limerick about a cat."]
CONCEPTS = [Concept("pirate", ["Talk like a pirate", "Speak as a pirate would"]),
            Concept("noir", ["Respond as a noir detective"])]
SMALL = Recipe(steps=4, batch=2, max_tokens=8, checkpoint_every=2, lr=3e-3)


def run(base: Path, out: Path, recipe: Recipe = SMALL, **kw) -> Path:
    return train(base, out, CONCEPTS, PROMPTS, recipe, outtype="f32", threads=1, progress=False, **kw)


@pytest.fixture(scope="module")
def trained(tiny_base_f32, tmp_path_factory) -> Path:
    return run(tiny_base_f32, tmp_path_factory.mktemp("train") / "run")


def test_the_written_flow_loads_and_steers_as_the_reference_reads_its_safetensors(trained, tiny_base_f32, tiny):
    """The flow GGUF through the runtime equals FLAS_SPEC.md's computation on the released-format
    safetensors + config.json beside it (tests/flow_reference.py, float64 numpy)."""
    config = json.loads((trained.parent / "config.json").read_text())
    assert config["disable_self_attn"] and config["num_blocks"] == 1 and config["layer"] == config["layer"] >= 0
    base_config = json.loads((tiny[0] / "config.json").read_text())
    ref = FlowReference(trained.parent / "flow.safetensors", base_config)
    with FlasModel(tiny_base_f32, trained, n_ctx=512) as m:
        assert m.flow_info["layer"] == config["layer"] and m.flow_info["n_steps"] == 3
        for wording in ("Talk like a pirate", "Respond as a noir detective", "Be a pirate"):
            t = m.trace(prompt=PROMPTS[0], concept=wording, flowtime=2.0, n_steps=3)
            want = ref.steer(t["unsteered"], m.concept_rows(wording).astype(np.float64), 2.0, 3)
            moved = np.linalg.norm(want - t["unsteered"]) / np.linalg.norm(t["unsteered"])
            err = np.linalg.norm(t["steered"] - want) / np.linalg.norm(want - t["unsteered"])
            assert moved > 1e-3 and err < 1e-3, (wording, moved, err)


def test_training_makes_the_student_write_what_the_teacher_wrote(tiny_base_f32, tmp_path):
    """The objective works end to end: trained long enough on one prompt, the steered base at T = 2
    continues it greedily as the teacher context did, which the unsteered base does not."""
    concept = Concept("pirate", ["Talk like a pirate"])
    path = train(tiny_base_f32, tmp_path / "run", [concept], PROMPTS[:1],
                 Recipe(steps=60, batch=1, max_tokens=6, lr=1e-2, samples=1, flowtime=2.0, checkpoint_every=60), outtype="f32",
                 threads=1, progress=False)
    teacher = concept.teacher.format(prompt=PROMPTS[0], concept="Talk like a pirate")
    with FlasModel(tiny_base_f32, path, n_ctx=512) as m:
        want = m.generate(messages=[{"role": "user", "content": teacher}], flowtime=0.0, temperature=0.0,
                          max_tokens=6).tokens
        steered = m.generate(PROMPTS[0], concept="Talk like a pirate", flowtime=2.0, temperature=0.0, max_tokens=6)
        plain = m.generate(PROMPTS[0], flowtime=0.0, temperature=0.0, max_tokens=6)
    assert steered.tokens == want != plain.tokens


def test_the_teacher_data_holds_the_greedy_and_sampled_continuations(trained, tiny_base_f32):
    """--samples 4: each prompt's greedy teacher continuation (as the runtime decodes the teacher
    context on its own) and sampled ones beside it, each paired with the student's prompt tokens."""
    import torch

    data = torch.load(trained.parent / "data.pt", weights_only=False)
    pirate = data["concepts"][0]
    with FlasModel(tiny_base_f32, trained, n_ctx=512) as m:
        for p in PROMPTS:
            student = m.prompt_tokens(p)
            mine = [tuple(y) for s, y, _ in pirate["examples"] if s == student]
            teacher = CONCEPTS[0].teacher.format(prompt=p, concept=CONCEPTS[0].wordings[0])
            greedy = m.generate(messages=[{"role": "user", "content": teacher}], flowtime=0.0, temperature=0.0,
                                max_tokens=SMALL.max_tokens, stop=["\n\n", "###"]).tokens
            assert tuple(greedy) in mine and 1 < len(mine) == len(set(mine)) <= SMALL.samples, (p, mine)
            context = m.prompt_tokens(messages=[{"role": "user", "content": teacher}])
            assert all(t == context for s, _, t in pirate["examples"] if s == student)  # the teacher's context


def test_the_kl_term_brings_the_students_next_token_distributions_to_the_teachers(tiny_base_f32, tmp_path):
    """--kl-weight: trained on the teacher's distributions besides its tokens, the steered
    student's next-token distributions come closer to the teacher's than with the tokens alone,
    measured through the runtime (KL from each teacher distribution, along its continuation)."""
    concept = Concept("pirate", ["Talk like a pirate"])

    def kl_after(kl_weight: float) -> float:
        recipe = Recipe(steps=40, batch=1, max_tokens=6, lr=1e-2, samples=1, flowtime=2.0, checkpoint_every=40,
                        kl_weight=kl_weight)
        path = train(tiny_base_f32, tmp_path / f"kl{kl_weight}", [concept], PROMPTS[:1], recipe, outtype="f32",
                     threads=1, progress=False)
        teacher = concept.teacher.format(prompt=PROMPTS[0], concept="Talk like a pirate")
        with FlasModel(tiny_base_f32, path, n_ctx=512) as m:
            context, student = m.prompt_tokens(messages=[{"role": "user", "content": teacher}]), m.prompt_tokens(PROMPTS[0])
            y = m.generate(prompt=context, flowtime=0.0, temperature=0.0, max_tokens=6).tokens
            kls = []
            for i in range(len(y)):
                p = log_softmax(m.trace(prompt=context + y[:i], flowtime=0.0)["logits"])
                q = log_softmax(m.trace(prompt=student + y[:i], concept="Talk like a pirate", flowtime=2.0)["logits"])
                kls.append(float(np.sum(np.exp(p) * (p - q))))
        return float(np.mean(kls))

    tokens_only, with_kl = kl_after(0.0), kl_after(1.0)
    assert with_kl < 0.8 * tokens_only, (with_kl, tokens_only)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max()
    return x - np.log(np.exp(x).sum())


def test_continuations_that_copy_the_teacher_context_are_dropped():
    """A continuation repeating six tokens in a row of the teacher's own text (its preface, its
    response marker) would teach the student to write them; six tokens the student's prompt has
    too are the prompt, not the teacher's."""
    preface, prompt = list(range(100, 112)), list(range(200, 210))
    teacher, student = [2] + preface + prompt + [7, 8], [2] + prompt
    assert trainer_module.repeats_context([50, 51] + preface[3:9] + [52], teacher, student)
    assert not trainer_module.repeats_context([50, 51] + preface[3:8] + [52], teacher, student)
    assert not trainer_module.repeats_context(prompt[:8], teacher, student)


def test_a_seed_fixes_the_flow(tiny_base_f32, tmp_path, trained):
    again = run(tiny_base_f32, tmp_path / "again")
    other = run(tiny_base_f32, tmp_path / "other", Recipe(**{**SMALL.__dict__, "seed": 1}))
    read = lambda p: (p.parent / "flow.safetensors").read_bytes()  # noqa: E731
    assert read(again) == read(trained) != read(other)


def test_a_resumed_run_equals_an_uninterrupted_one(tiny_base_f32, tmp_path, monkeypatch, trained):
    real = trainer_module.loss_of
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:  # during step 3, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(trainer_module, "loss_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_base_f32, tmp_path / "run")
    monkeypatch.setattr(trainer_module, "loss_of", real)
    with pytest.raises(ValueError, match="holds a run already"):
        run(tiny_base_f32, tmp_path / "run")
    resumed = run(tiny_base_f32, tmp_path / "run", resume=True)
    assert (resumed.parent / "flow.safetensors").read_bytes() == (trained.parent / "flow.safetensors").read_bytes()
    with pytest.raises(ValueError, match="another recipe"):
        run(tiny_base_f32, tmp_path / "run", Recipe(**{**SMALL.__dict__, "lr": 1e-4}), resume=True)


def fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_bad_arguments_are_clear_errors(tiny_base_f32, tmp_path, capsys):
    other = tmp_path / "mamba.gguf"
    w = GGUFWriter(str(other), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    assert "base family 'mamba' has no FLAS flow; flas-train supports gemma2, gemma3, qwen3, llama" in \
        fails(capsys, other, "--out", out)
    assert "not found" in fails(capsys, tmp_path / "missing.gguf", "--out", out)
    (tmp_path / "text.gguf").write_text("not a model")
    assert "is not a GGUF file" in fails(capsys, tmp_path / "text.gguf", "--out", out)
    none = tmp_path / "none.json"
    none.write_text("[]")
    assert "expected a non-empty JSON list of concepts" in fails(capsys, tiny_base_f32, "--out", out, "--concepts", none)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "wordings": ["Be x"], "teacher": "no prompt here"}]))
    assert "must hold {prompt}" in fails(capsys, tiny_base_f32, "--out", out, "--concepts", bad)
    assert "--layer 99 is outside the base's" in fails(capsys, tiny_base_f32, "--out", out, "--layer", 99)
    assert "--steps must be >= 1" in fails(capsys, tiny_base_f32, "--out", out, "--steps", 0)
    assert "--samples must be >= 1" in fails(capsys, tiny_base_f32, "--out", out, "--samples", 0)
    assert "--sample-temperature must be > 0" in fails(capsys, tiny_base_f32, "--out", out, "--sample-temperature", 0)
    assert "--kl-weight must be >= 0" in fails(capsys, tiny_base_f32, "--out", out, "--kl-weight", -1)
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"name": "x", "wordings": ["Be x"], "teacher": "word " * 3000 + "{prompt}"}]))
    assert "longer than a sequence's context" in fails(capsys, tiny_base_f32, "--out", out, "--concepts", long,
                                                       "--quiet")


def test_help_says_what_every_knob_does(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--concepts", "--prompts", "--layer", "--steps", "--batch", "--lr", "--flowtime",
                   "--n-steps", "--max-tokens", "--samples", "--sample-temperature", "--kl-weight", "--seed", "--checkpoint-every", "--resume", "--outtype", "--threads",
                   "--quiet"):
        assert option in text
    assert "(default 600)" in text and "(default 0)" in text
