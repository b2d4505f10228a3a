"""An independent FLAS flow in plain numpy, written from FLAS_SPEC.md (float64).

It reads the released-format checkpoint directly (not the GGUF), and processes a whole
sequence at once with a causal mask, which equals the incremental per-step KV caches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file


class FlowReference:
    def __init__(self, flow_path: Path, base_config: dict):
        self.w = {k: v.double().numpy() for k, v in load_file(flow_path).items()}
        cfg = json.loads((Path(flow_path).parent / "config.json").read_text())
        self.n_blocks = cfg["num_blocks"]
        self.eps = base_config["rms_norm_eps"]
        # FLAS_SPEC.md 7: what the base family changes
        family = base_config.get("model_type", "gemma2")
        self.gemma = family.startswith("gemma")
        self.cap = base_config.get("attn_logit_softcapping") if self.gemma else None  # None: no soft-capping
        self.theta = base_config["rope_theta"]
        scaling = base_config.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type"))
        self.rope_factor = float(scaling["factor"]) if kind == "linear" else 1.0  # positions / factor
        self.llama3 = scaling if kind == "llama3" else None
        self.silu = not self.gemma
        self.n_head = base_config["num_attention_heads"]
        self.n_kv = base_config["num_key_value_heads"]
        self.D = base_config["head_dim"]
        self.qpas = base_config["query_pre_attn_scalar"] if self.gemma else base_config["head_dim"]

    # -- pieces (FLAS_SPEC.md section 4) --
    def norm(self, x, w):  # RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w) (Gemma) or * w (qwen3, llama)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * ((1.0 + w) if self.gemma else w)

    def inv_freq(self):
        inv = self.theta ** (-np.arange(0, self.D, 2, dtype=np.float64) / self.D)
        if self.llama3:  # HF's Llama-3 frequency scaling
            r = self.llama3
            factor, low, high, ctx = (float(r[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                            "original_max_position_embeddings"))
            wavelen = 2 * np.pi / inv
            smooth = (ctx / wavelen - low) / (high - low)
            scaled = np.where(wavelen > ctx / low, inv / factor, inv)
            mid = (wavelen >= ctx / high) & (wavelen <= ctx / low)
            inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
        return inv

    def rope(self, x, pos):  # x [n, heads, D], NeoX rotate-half
        half = self.D // 2
        ang = np.asarray(pos, dtype=np.float64)[:, None] / self.rope_factor * self.inv_freq()[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def attend(self, q, k, v, scale, causal: bool):
        rep = self.n_head // self.n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("nhd,mhd->hnm", q, k) * scale
        if self.cap:
            s = self.cap * np.tanh(s / self.cap)
        if causal:
            n, m = q.shape[0], k.shape[0]
            s = np.where(np.tril(np.ones((n, m), bool), k=m - n)[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        return np.einsum("hnm,mhd->nhd", s, v).reshape(q.shape[0], -1)

    def time_embed(self, t):  # t: one time -> [H]; or one per row [n] -> [n, H]
        freqs = np.exp(-np.log(10000.0) * np.arange(64, dtype=np.float64) / 64)
        arg = np.asarray(t, np.float64)[..., None] * freqs
        emb = np.concatenate([np.sin(arg), np.cos(arg)], -1)
        x = emb @ self.w["time_embed.mlp.0.weight"].T + self.w["time_embed.mlp.0.bias"]
        x = x / (1.0 + np.exp(-x))
        return x @ self.w["time_embed.mlp.2.weight"].T + self.w["time_embed.mlp.2.bias"]

    def block(self, b, h, e, c, pos):
        w, p, D = self.w, f"blocks.{b}.", self.D
        h = h + e  # (sic) in every block
        if p + "cross_gate" in w:
            x = self.norm(h, w[p + "pre_cross_norm.weight"])
            q = (x @ w[p + "cross_attn.q_proj.weight"].T).reshape(len(h), self.n_head, D)
            q = self.rope(self.norm(q, w[p + "cross_attn.q_norm.weight"]), pos)
            # c: one concept [K, H], or one per row (a running request's change of concept)
            per_row = c if isinstance(c, list) else [c] * len(h)
            o = np.empty((len(h), self.n_head * D))
            for ci in {id(x): x for x in per_row}.values():
                rows = np.array([x is ci for x in per_row])
                k = (ci @ w[p + "cross_attn.k_proj.weight"].T).reshape(len(ci), self.n_kv, D)
                k = self.rope(self.norm(k, w[p + "cross_attn.k_norm.weight"]), np.arange(len(ci)))
                v = (ci @ w[p + "cross_attn.v_proj.weight"].T).reshape(len(ci), self.n_kv, D)
                o[rows] = self.attend(q[rows], k, v, D ** -0.5, causal=False)
            o = o @ w[p + "cross_attn.o_proj.weight"].T
            h = h + w[p + "cross_gate"] * self.norm(o, w[p + "post_cross_norm.weight"])
        if p + "self_attn_gate" in w:
            x = self.norm(h, w[p + "pre_sa_norm.weight"])
            q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(len(h), self.n_head, D)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(len(h), self.n_kv, D)
            if p + "self_attn.q_norm.weight" in w:  # qwen3: per-head norms before RoPE
                q, k = self.norm(q, w[p + "self_attn.q_norm.weight"]), self.norm(k, w[p + "self_attn.k_norm.weight"])
            q, k = self.rope(q, pos), self.rope(k, pos)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(len(h), self.n_kv, D)
            o = self.attend(q, k, v, self.qpas ** -0.5, causal=True) @ w[p + "self_attn.o_proj.weight"].T
            h = h + w[p + "self_attn_gate"] * self.norm(o, w[p + "post_sa_norm.weight"])
        if p + "mlp_gate" in w:
            x = self.norm(h, w[p + "pre_mlp_norm.weight"])
            g = x @ w[p + "gate_proj.weight"].T
            if self.silu:
                act = g / (1.0 + np.exp(-g))
            else:
                act = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
            o = (act * (x @ w[p + "up_proj.weight"].T)) @ w[p + "down_proj.weight"].T
            h = h + w[p + "mlp_gate"] * self.norm(o, w[p + "post_mlp_norm.weight"])
        return h

    def velocity(self, h, t, c, pos):
        e = self.time_embed(t)
        x = h
        for b in range(self.n_blocks):
            x = self.block(b, x, e, c, pos)
        return x - h

    def steer(self, h0, c, flowtime, n_steps: int, pos=None):
        """Euler integration (FLAS_SPEC.md 3) of all rows h0 [n, H] at positions pos (default 0..n-1).
        flowtime: one T, or one per row [n] (a schedule: each row integrated to its own T, its
        self-attention reading the other rows' states at the same Euler step, as a cache holds them);
        c: one concept's rows [K, H], or a list of one per row (a change of concept while it ran)."""
        pos = np.arange(len(h0)) if pos is None else pos
        h, dt = np.asarray(h0, np.float64), np.asarray(flowtime, np.float64) / n_steps
        for k in range(n_steps):
            h = h + dt[..., None] * self.velocity(h, k * dt, c, pos)
        return h


def generate_driven_by_reference(m, ref: FlowReference, c, prompt: str, flowtime: float, n_steps: int,
                                 max_tokens: int) -> list[int]:
    """Greedy tokens of FlasModel m with its flow replaced, through set_steer_hook, by the reference:
    every forward pass hands over the new layer-L rows, the reference integrates them with all
    the rows before (its own self-attention cache), and the new rows go back."""
    seen: list[np.ndarray] = []

    def reference_hook(rows: np.ndarray, pos0: int) -> np.ndarray:
        assert pos0 == sum(len(r) for r in seen)  # rows arrive in order, positions consecutive
        seen.append(rows.copy())
        return ref.steer(np.concatenate(seen), c, flowtime, n_steps)[pos0:].astype(np.float32)

    m.set_steer_hook(reference_hook)
    try:
        return m.generate(prompt, flowtime=0.0, temperature=0.0, max_tokens=max_tokens).tokens
    finally:
        m.set_steer_hook(None)
