"""Issue 21's probe, as docs/QUALITY.md reports it (objective 2): French and Spanish teacher
continuations of the real Gemma-3 270M, their layer-12 rows paired with the student's, a gemma3
FLAS flow (cross-attention + MLP, no self-attention) trained by flow matching in PyTorch on those
pairs, converted by flas-convert and run by the runtime on the held-out prompts.

    python benchmarks/quality_probe.py [LR] [STEPS] [SCALE]   (defaults 3e-4 600 1; ~15 min on 2 cores)

SCALE: T = 2 reaches SCALE x the teacher's displacement (objective (b) of docs/QUALITY.md).
The row pairs are cached in OUT/pairs.npz and reused.

A measurement script, not the trainer: flas-train (issue 21) replaces it. Writes /tmp/exp/flow1.
Run it from outside the source tree (the installed flas_cpp is imported).
"""
import os
import time, json, difflib, re, math, sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from flas_cpp import FlasModel
from flas_cpp.bundled import real_models
OUT = "/tmp/exp/flow1"; os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0); np.random.seed(0); torch.set_num_threads(2)
b, f = real_models()  # the base, and a flow only for its concept rows and traces (the probe trains its own)
m = FlasModel(b, f, n_seq=6, n_ctx=8192)
topics = ["the ocean","a good breakfast","your favourite book","the city at night","learning to swim","winter","a birthday party","trains","the moon","gardening","a rainy afternoon","music","your best friend","the mountains","a long walk","cooking pasta","the library","a summer holiday","old photographs","the market"]
forms = ["Tell me about {}.", "Write a few sentences about {}.", "What do you think of {}?", "Describe {}.", "Why do people like {}?", "Explain {} to a child."]
train = [fm.format(t) for t in topics for fm in forms]
held = json.load(open("/work/shared/data/concepts_prompts.json"))["prompts"]
SW = {"fr": "le la les un une des et est en du de que qui pour pas je il elle nous vous ce cette sont avec dans sur au aux mon ma mes très",
      "es": "el la los las un una y es en del de que por para no yo él ella nosotros este esta son con mi muy se lo como",
      "en": "the a an and is are of to in that it for you i with on this be was my"}
SW = {k: set(v.split()) for k, v in SW.items()}
def lang(t):
    w = re.findall(r"[a-záéíóúñàâçèêëîïôûùüÿœ']+", t.lower()); c = {k: sum(x in s for x in w) for k, s in SW.items()}
    best = max(c, key=c.get); return best if c[best] >= 2 else "?"
C = {"fr": ("Le texte suivant est écrit en français.\n\n", "en français", ["Write in French", "Answer in French.", "Respond in French", "Use the French language", "French"]),
     "es": ("El siguiente texto está escrito en español.\n\n", "en español", ["Write in Spanish", "Answer in Spanish.", "Respond in Spanish", "Use the Spanish language", "Spanish"])}
cache = OUT + "/pairs.npz"
t0 = time.time()
if os.path.exists(cache):
    z = np.load(cache); rows_s, rows_t, pos, cid = list(z['s']), list(z['t']), list(z['p']), list(z['c'])
else:
    rows_s, rows_t, pos, cid = [], [], [], []
    t0 = time.time()
    for k, (pf, mk, words) in C.items():
        S = [m.prompt_tokens(p) for p in train]
        T = [[2] + m.tokenize(pf + f"### Instruction:\n{p}\n\n### Response ({mk}):\n", add_bos=False) for p in train]
        gens = m.generate_many([dict(prompt=t, max_tokens=24, temperature=0.0, flowtime=0, stop=["\n\n"]) for t in T])
        ok = [lang(g.text) == k for g in gens]; print(k, "teacher", sum(ok), len(ok), time.time() - t0, flush=True)
        for s, t, g, o in zip(S, T, gens, ok):
            if not o: continue
            y = g.tokens
            rs = m.trace(prompt=s + y, flowtime=0)["unsteered"]; rt = m.trace(prompt=t + y, flowtime=0)["unsteered"]
            sm = difflib.SequenceMatcher(a=s[1:], b=t[1:], autojunk=False)
            pairs = [(i + 1 + q, j + 1 + q) for i, j, n in sm.get_matching_blocks() for q in range(n)]
            pairs.append((len(s) - 1, len(t) - 1)); pairs += [(len(s) + q, len(t) + q) for q in range(len(y))]
            for i, j in pairs:
                rows_s.append(rs[i]); rows_t.append(rt[j]); pos.append(i); cid.append(k)
    np.savez(cache, s=np.array(rows_s), t=np.array(rows_t), p=np.array(pos), c=np.array(cid))
print("pairs", len(rows_s), time.time() - t0, flush=True)
concepts = {k: [torch.tensor(m.concept_rows(w)) for w in C[k][2]] for k in C}
HS, HT = torch.tensor(np.array(rows_s)), torch.tensor(np.array(rows_t)); P = torch.tensor(pos)
H, nH, nKV, D, I, eps, theta = 640, 4, 1, 256, 2048, 1e-6, 1e6
def gnorm(x, w): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)
def rope(x, p):  # x [n, h, D]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float32) / D); a = p[:, None].float() * inv[None]
    cos, sin = a.cos()[:, None], a.sin()[:, None]; x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
class Flow(nn.Module):
    def __init__(s, g0):
        super().__init__()
        s.te0, s.te2 = nn.Linear(128, H), nn.Linear(H, H)
        z = lambda n: nn.Parameter(torch.zeros(n))
        s.pre_cross, s.post_cross, s.pre_mlp, s.post_mlp, s.qn, s.kn = z(H), z(H), z(H), z(H), z(D), z(D)
        s.q, s.k, s.v, s.o = nn.Linear(H, nH * D, bias=False), nn.Linear(H, nKV * D, bias=False), nn.Linear(H, nKV * D, bias=False), nn.Linear(nH * D, H, bias=False)
        s.gate, s.up, s.down = nn.Linear(H, I, bias=False), nn.Linear(H, I, bias=False), nn.Linear(I, H, bias=False)
        s.cg, s.mg = nn.Parameter(torch.full((H,), g0)), nn.Parameter(torch.full((H,), g0))
    def temb(s, t):
        fr = torch.exp(-math.log(10000) * torch.arange(64) / 64); a = t[:, None] * fr[None]
        return s.te2(F.silu(s.te0(torch.cat([a.sin(), a.cos()], -1))))
    def forward(s, h, t, p, c):  # h [n,H], t [n], p [n], c [K,H] (one concept per batch)
        h_in = h; h = h + s.temb(t); n, K = h.shape[0], c.shape[0]
        x = gnorm(h, s.pre_cross)
        q = rope(gnorm(s.q(x).view(n, nH, D), s.qn), p)
        k = rope(gnorm(s.k(c).view(K, nKV, D), s.kn), torch.arange(K))
        v = s.v(c).view(K, nKV, D)
        att = torch.softmax(torch.einsum("nhd,kd->nhk", q, k[:, 0]) * D ** -0.5, -1)
        h = h + s.cg * gnorm(s.o(torch.einsum("nhk,kd->nhd", att, v[:, 0]).reshape(n, nH * D)), s.post_cross)
        x = gnorm(h, s.pre_mlp)
        h = h + s.mg * gnorm(s.down(F.gelu(s.gate(x), approximate="tanh") * s.up(x)), s.post_mlp)
        return h - h_in
SCALE = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
V = SCALE * (HT - HS) / 2; vr = V.pow(2).mean().sqrt().item(); print("velocity rms/dim", vr)
flow = Flow(vr); opt = torch.optim.AdamW(flow.parameters(), lr=float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4, weight_decay=0.0)
idx = {k: torch.tensor([i for i, c in enumerate(cid) if c == k]) for k in C}
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
for step in range(steps):
    k = list(C)[step % len(C)]; ii = idx[k][torch.randint(len(idx[k]), (256,))]
    c = concepts[k][torch.randint(len(concepts[k]), ()).item()]
    t = torch.rand(256) * 2; hs, v = HS[ii], V[ii]; x = hs + t[:, None] * v
    loss = ((flow(x, t, P[ii], c) - v).pow(2).sum(-1) / v.pow(2).sum(-1)).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0: print(step, loss.item(), time.time() - t0, flush=True)
sd = {"time_embed.mlp.0.weight": flow.te0.weight, "time_embed.mlp.0.bias": flow.te0.bias, "time_embed.mlp.2.weight": flow.te2.weight, "time_embed.mlp.2.bias": flow.te2.bias}
B = "blocks.0."
sd.update({B + "pre_cross_norm.weight": flow.pre_cross, B + "post_cross_norm.weight": flow.post_cross, B + "cross_attn.q_proj.weight": flow.q.weight,
  B + "cross_attn.k_proj.weight": flow.k.weight, B + "cross_attn.v_proj.weight": flow.v.weight, B + "cross_attn.o_proj.weight": flow.o.weight,
  B + "cross_attn.q_norm.weight": flow.qn, B + "cross_attn.k_norm.weight": flow.kn, B + "cross_gate": flow.cg,
  B + "pre_mlp_norm.weight": flow.pre_mlp, B + "post_mlp_norm.weight": flow.post_mlp, B + "gate_proj.weight": flow.gate.weight,
  B + "up_proj.weight": flow.up.weight, B + "down_proj.weight": flow.down.weight, B + "mlp_gate": flow.mg})
from safetensors.torch import save_file
save_file({k: v.detach().contiguous().float() for k, v in sd.items()}, OUT + "/flow.safetensors", {"format": "pt"})
json.dump({"model_id": "google/gemma-3-270m", "layer": 12, "num_blocks": 1, "n_steps": 3, "T_min": 0.5, "T_max": 2.0, "concept_max_len": 64,
           "prompt_format": "alpaca", "disable_cross_attn": False, "disable_self_attn": True, "disable_mlp": False, "seed": 0}, open(OUT + "/config.json", "w"))
from flas_cpp.convert import convert_flow
convert_flow(OUT + "/flow.safetensors", OUT + "/flow-f16.gguf", outtype="f16", force=True, progress=False)
del m
m = FlasModel(b, OUT + "/flow-f16.gguf", n_seq=6, n_ctx=8192)
for concept in ["Write in French", "Please speak French to me", "Write in Spanish", "Reply in the Spanish language"]:
    for T in [0.0, 1.0, 2.0, 3.0]:
        gens = m.generate_many([dict(prompt=p, concept=concept, max_tokens=24, temperature=0.0, flowtime=T) for p in held[:10]])
        ls = [lang(g.text) for g in gens]
        print(concept, T, {x: ls.count(x) for x in set(ls)}, [g.text[:50] for g in gens[:2]], flush=True)
