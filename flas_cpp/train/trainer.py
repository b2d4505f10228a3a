"""flas-train's work: teacher data from the base model itself (through the runtime), then a flow
trained with the language-model loss through the base's layers above L (transformers reading the
same GGUF), checkpointed so that an interrupted run resumes to the same result, and written as the
released safetensors + config.json and as a flow GGUF.

Why this objective: on a pretrained base the teacher's layer-L rows are not enough (the layers
above L also read the teacher's prefix), so regressing them steers nothing; the loss on what the
teacher writes does (docs/QUALITY.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .concepts import Concept, check_concepts
from .flow import Flow
from .recipe import Recipe

ARCHITECTURES = ("gemma2", "gemma3", "qwen3", "llama")
N_SEQ = 4  # sequences decoding the teacher's continuations together


@dataclass
class BaseFacts:
    arch: str
    n_layer: int
    name: str
    alpaca: bool                  # no chat template: a pretrained base, prompted as alpaca


def read_base(path: str | Path) -> BaseFacts:
    """What the base GGUF is, read with gguf-py before anything heavy is loaded."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"base model GGUF not found: {path}")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises several types for a file that is not GGUF
        raise ValueError(f"{path} is not a GGUF file ({e})") from None

    def field(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: base family {arch!r} has no FLAS flow; flas-train supports "
                         f"{', '.join(ARCHITECTURES)}")
    return BaseFacts(arch=arch, n_layer=int(field(f"{arch}.block_count")), name=field("general.name") or path.stem,
                     alpaca=field("tokenizer.chat_template") is None)


def flow_config(facts: BaseFacts, recipe: Recipe, concept_max_len: int = 64) -> dict:
    """The released config.json of a flow this recipe trains."""
    return {"model_id": facts.name, "layer": recipe.layer, "num_blocks": 1, "n_steps": recipe.n_steps,
            "T_min": 0.5, "T_max": recipe.flowtime, "concept_max_len": concept_max_len,
            "prompt_format": "alpaca" if facts.alpaca else "chat", "disable_cross_attn": False,
            "disable_self_attn": True, "disable_mlp": False, "seed": recipe.seed}


def write_flow(flow: Flow, config: dict, base_config: Path, out_dir: Path, outtype: str, progress: bool) -> Path:
    """out_dir/flow.safetensors + config.json (the released format), and the flow GGUF beside."""
    from safetensors.torch import save_file

    from ..convert import convert_flow

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(flow.released_state(), str(out_dir / "flow.safetensors"), {"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gguf_path = out_dir / f"flow-{outtype.lower()}.gguf"
    convert_flow(out_dir / "flow.safetensors", gguf_path, base_config=base_config, outtype=outtype, force=True,
                 progress=progress)
    return gguf_path


def load_base_torch(base: Path, progress: bool = True):
    """The base as a transformers model read from the same GGUF (dequantized to float32), frozen,
    computing what llama.cpp computes (train() checks its logits against the runtime's)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    if not progress:
        logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(str(base.parent), gguf_file=base.name)
    if config.model_type == "gemma2":
        # a GGUF does not carry it, and llama.cpp's gemma2 scales queries by 1/sqrt(head_dim)
        config.query_pre_attn_scalar = config.head_dim
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, config=config,
                                                 dtype=torch.float32)
    model.requires_grad_(False)
    model.eval()
    return model


def rope_inv_freq(model) -> torch.Tensor:
    """The flow's RoPE frequencies: the base's own (gemma3: its global layers'), scaling included."""
    rot = model.model.rotary_emb
    inv = getattr(rot, "full_attention_inv_freq", None)
    return inv if inv is not None else rot.inv_freq


def teacher_data(base: Path, init_flow: Path, concepts: list[Concept], prompts: list[str], recipe: Recipe,
                 progress: bool) -> dict:
    """Through the runtime: each concept's wordings encoded, and for each prompt the teacher's
    continuations (greedy and sampled) as examples (student prompt tokens, continuation, teacher
    context tokens): the student's are those a steered request will have."""
    from .. import FlasModel
    from .judges import JUDGES

    data = {"concepts": [], "row_rms": 0.0}
    with FlasModel(str(base), str(init_flow), n_seq=N_SEQ, n_ctx=4096) as m:
        n_ctx_seq = m.n_ctx_seq
        traces = [m.trace(prompt=p, flowtime=0.0) for p in prompts[:8]]
        data["row_rms"] = float(np.median([np.sqrt(np.mean(t["unsteered"][1:] ** 2)) for t in traces]))
        data["check"] = {"tokens": list(traces[0]["tokens"]), "logits": traces[0]["logits"].tolist()}
        student = [m.prompt_tokens(p) for p in prompts]  # what a steered request of each prompt holds
        bar = tqdm(total=len(concepts) * len(prompts) * recipe.samples, desc="teacher continuations", unit="text",
                   file=sys.stderr, disable=not progress)
        for c in concepts:
            teachers = []
            for p in prompts:
                text = c.teacher.format(prompt=p, concept=c.wordings[0])
                # the raw text's length first: the chat template's would fail with a message that
                # names no concept
                tokens = m.tokenize(text, add_bos=True)
                if len(tokens) + recipe.max_tokens <= n_ctx_seq and m.flow_info["prompt_format"] != "alpaca":
                    tokens = m.prompt_tokens(messages=[{"role": "user", "content": text}])
                if len(tokens) + recipe.max_tokens > n_ctx_seq:
                    raise ValueError(f"concept {c.name!r}: the teacher context for {p!r} is {len(tokens)} tokens; with "
                                     f"{recipe.max_tokens} to write it is longer than a sequence's context "
                                     f"({n_ctx_seq} tokens)")
                teachers.append(tokens)
            # the greedy continuation and samples-1 drawn from the teacher: sampled targets train
            # the teacher's distribution rather than one path through it (less memorised, more
            # fluent on new prompts; docs/QUALITY.md)
            which = [(i, k) for i in range(len(prompts)) for k in range(recipe.samples)]
            requests = [dict(prompt=teachers[i], max_tokens=recipe.max_tokens, flowtime=0.0, stop=["\n\n", "###"],
                             temperature=0.0 if k == 0 else recipe.sample_temperature, seed=recipe.seed * 1000 + k)
                        for i, k in which]
            # in chunks of a few per sequence, for a progress bar that moves (the same chunks every
            # run: the same decode batches, so the same data)
            results = []
            for j in range(0, len(requests), 4 * N_SEQ):
                chunk = requests[j:j + 4 * N_SEQ]
                results += m.generate_many(chunk)
                bar.update(len(chunk))
            examples, seen = [], set()
            for (i, _), g in zip(which, results):
                key = (i, tuple(g.tokens))
                if (g.tokens and key not in seen and (c.judge is None or JUDGES[c.judge](g.text))
                        and not repeats_context(g.tokens, teachers[i], student[i])):
                    seen.add(key)
                    examples.append((student[i], g.tokens, teachers[i]))
            if not examples:
                raise ValueError(f"concept {c.name!r}: no teacher continuation showed the concept"
                                 + (f" (judge {c.judge!r})" if c.judge else "") + "; give a stronger teacher context")
            data["concepts"].append({"name": c.name, "examples": examples,
                                     "rows": [m.concept_rows(w).tolist() for w in c.wordings]})
        bar.close()
    return data


def repeats_context(tokens: list[int], teacher: list[int], student: list[int], n: int = 6) -> bool:
    """Does a continuation copy n tokens in a row of the teacher's context that the student's prompt
    does not have (its preface, its response marker)? The student would learn to write them."""
    def grams(t):
        return {tuple(t[j:j + n]) for j in range(len(t) - n + 1)}
    return bool(grams(tokens) & (grams(teacher) - grams(student)))


def check_same_model(model, check: dict) -> None:
    """The loss is only right if transformers computes the base as llama.cpp does: compare the
    last-token logits of a prompt (quantized weights keep them close, not equal)."""
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([check["tokens"]])).logits[0, -1]
    theirs = torch.tensor(check["logits"])
    cos = float(F.cosine_similarity(ours, theirs, dim=0))
    if cos < 0.98:
        raise ValueError(f"transformers computes this GGUF differently from llama.cpp (logit cosine {cos:.3f}); "
                         f"flas-train cannot train a flow for it")


class Steerer:
    """A forward hook on decoder layer L that integrates the flow over the layer's output."""

    def __init__(self, flow: Flow, recipe: Recipe):
        self.flow, self.recipe, self.concept = flow, recipe, None

    def __call__(self, module, args, output):
        if self.concept is None:
            return output
        h = output[0] if isinstance(output, tuple) else output
        h = self.flow.steer(h, self.concept, self.recipe.flowtime, self.recipe.n_steps)
        return (h, *output[1:]) if isinstance(output, tuple) else h


def continuation_logits(model, seqs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """For (context, continuation) pairs: the logits predicting each continuation token after its
    context, and those tokens, concatenated over the batch in order (the logits computed only there)."""
    n = max(len(c) + len(y) for c, y in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    targets = torch.full((len(seqs), n), -100, dtype=torch.long)
    for r, (c, y) in enumerate(seqs):
        q = c + y
        ids[r, :len(q)] = torch.tensor(q)
        mask[r, :len(q)] = 1
        targets[r, len(c) - 1:len(q) - 1] = torch.tensor(y)
    h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    sel = targets >= 0
    logits = model.lm_head(h[sel])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits, targets[sel]


def loss_of(model, steerer: Steerer, batch: list, concept: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """The steered student's cross-entropy of the teacher's tokens, plus kl_weight x the KL divergence
    from the teacher's next-token distributions (the base unsteered in the teacher's context) to
    the student's, at the same tokens."""
    steerer.concept = concept
    logits, y = continuation_logits(model, [(s, t) for s, t, _ in batch])
    loss = F.cross_entropy(logits, y)
    if kl_weight:
        steerer.concept = None
        with torch.no_grad():
            teacher, _ = continuation_logits(model, [(c, t) for _, t, c in batch])
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
        loss = loss + kl_weight * kl
    return loss


def train(base: str | Path, out: str | Path, concepts: list[Concept], prompts: list[str], recipe: Recipe,
          resume: bool = False, outtype: str = "q8_0", threads: int = 0, progress: bool = True) -> Path:
    """Trains a flow for the base GGUF into out/; returns the flow GGUF's path."""
    base, out = Path(base), Path(out)
    facts = read_base(base)
    recipe = dataclasses.replace(recipe, layer=facts.n_layer * 2 // 3 if recipe.layer is None else recipe.layer)
    if not 0 <= recipe.layer < facts.n_layer:
        raise ValueError(f"--layer {recipe.layer} is outside the base's {facts.n_layer} layers (0..{facts.n_layer - 1})")
    for name, lo in (("steps", 1), ("batch", 1), ("n_steps", 1), ("max_tokens", 1), ("samples", 1),
                     ("checkpoint_every", 1)):
        if getattr(recipe, name) < lo:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(recipe, name)}")
    for name in ("lr", "flowtime", "sample_temperature"):
        if not getattr(recipe, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(recipe, name)}")
    if not recipe.kl_weight >= 0:
        raise ValueError(f"--kl-weight must be >= 0, got {recipe.kl_weight}")
    if not prompts:
        raise ValueError("no training prompts")
    check_concepts(concepts, facts.alpaca)
    ckpt_path, data_path = out / "checkpoint.pt", out / "data.pt"
    if ckpt_path.exists() and not resume:
        raise ValueError(f"{out} holds a run already (checkpoint.pt): pass --resume to continue it, or choose "
                         "another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2)))
    torch.manual_seed(recipe.seed)

    model = load_base_torch(base, progress)
    base_config = out / "base_config.json"
    model.config.to_json_file(str(base_config))
    flow = Flow(model.config, rope_inv_freq(model))
    config = flow_config(facts, recipe)

    state = torch.load(ckpt_path, weights_only=False) if resume and ckpt_path.exists() else None
    if state is not None and state["recipe"] != dataclasses.asdict(recipe):
        raise ValueError(f"{ckpt_path} was made with another recipe ({state['recipe']}); resume it with the same "
                         "arguments, or choose another --out")
    if data_path.exists() and (state is not None or resume):
        data = torch.load(data_path, weights_only=False)
    else:
        init = write_flow(flow, config, base_config, out / "init", "f32", progress=False)
        data = teacher_data(base, init, concepts, prompts, recipe, progress)
        torch.save(data, data_path)
    check_same_model(model, data["check"])
    flow.gate_scale = data["row_rms"]
    opt = torch.optim.AdamW(flow.parameters(), lr=recipe.lr, weight_decay=0.0)
    start = 0
    if state is not None:
        flow.load_state_dict(state["flow"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    steerer = Steerer(flow, recipe)
    hook = model.model.layers[recipe.layer].register_forward_hook(steerer)
    rows = [[torch.tensor(r, dtype=torch.float32) for r in c["rows"]] for c in data["concepts"]]
    bar = tqdm(total=recipe.steps, initial=start, desc="training", unit="step", file=sys.stderr, disable=not progress)
    try:
        for step in range(start, recipe.steps):
            # every draw of a step comes from (seed, step): a resumed run takes the same batches
            rng = np.random.default_rng([recipe.seed, step])
            ci = step % len(data["concepts"])
            examples = data["concepts"][ci]["examples"]
            concept = rows[ci][rng.integers(len(rows[ci]))]
            idx = rng.choice(len(examples), min(recipe.batch, len(examples)), replace=False)
            loss = loss_of(model, steerer, [examples[i] for i in idx], concept, recipe.kl_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", concept=data["concepts"][ci]["name"])
            bar.update(1)
            if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.steps:
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save({"step": step + 1, "flow": flow.state_dict(), "opt": opt.state_dict(),
                            "recipe": dataclasses.asdict(recipe)}, tmp)
                os.replace(tmp, ckpt_path)  # a run killed while saving keeps the previous checkpoint
    finally:
        bar.close()
        hook.remove()
    return write_flow(flow, config, base_config, out, outtype, progress)
