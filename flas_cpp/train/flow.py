"""The FLAS flow (FLAS_SPEC.md 4) as a PyTorch module, for training: one block of cross-attention
on the concept rows and an MLP, without self-attention (as gemma3 flows are trained, and so that
a trained flow needs no per-step KV caches), shaped and normed as the base's family wants
(FLAS_SPEC.md 7). Its state_dict has the released checkpoint's names."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = ("gemma2", "gemma3", "gemma3_text", "qwen3", "llama")


class Norm(nn.Module):
    """RMSNorm in the family's form: x * (1 + w) for Gemma (w starts at 0), w * x otherwise (w at 1)."""

    def __init__(self, n: int, eps: float, gemma: bool):
        super().__init__()
        self.eps, self.gemma = eps, gemma
        self.weight = nn.Parameter(torch.zeros(n) if gemma else torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * (1.0 + self.weight) if self.gemma else y * self.weight


class Flow(nn.Module):
    """velocity(h, t, c) of one FlowBlock. gate_scale: the size of a layer-L row per channel;
    the gates start at gate_init x that, so that training starts from a small, non-zero push."""

    def __init__(self, cfg, inv_freq: torch.Tensor, gate_scale: float = 1.0, gate_init: float = 0.02):
        super().__init__()
        family = cfg.model_type
        if family not in FAMILIES:
            raise ValueError(f"base family {family!r} has no FLAS flow; supported: gemma2, gemma3, qwen3, llama")
        self.gemma = family.startswith("gemma")
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or H // self.n_head
        cap = getattr(cfg, "attn_logit_softcapping", None) if family == "gemma2" else None
        self.cap = float(cap) if cap else None
        bias = bool(getattr(cfg, "attention_bias", False))
        eps = float(cfg.rms_norm_eps)
        self.register_buffer("inv_freq", inv_freq.float().clone(), persistent=False)
        self.te0, self.te2 = nn.Linear(128, H), nn.Linear(H, H)
        n = lambda k: Norm(k, eps, self.gemma)  # noqa: E731
        self.pre_cross_norm, self.post_cross_norm, self.pre_mlp_norm, self.post_mlp_norm = n(H), n(H), n(H), n(H)
        self.q_norm, self.k_norm = n(self.D), n(self.D)
        self.q_proj = nn.Linear(H, self.n_head * self.D, bias=bias)
        self.k_proj = nn.Linear(H, self.n_kv * self.D, bias=bias)
        self.v_proj = nn.Linear(H, self.n_kv * self.D, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.D, H, bias=bias)
        self.gate_proj, self.up_proj = nn.Linear(H, I, bias=False), nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)
        self.gelu = self.gemma
        # The gates are trained in units of gate_scale so that one learning rate fits every
        # parameter whatever the size of the base's residual stream (Gemma's rows are ~10^4).
        self.gate_scale = float(gate_scale)
        self.cross_gate = nn.Parameter(torch.full((H,), gate_init))
        self.mlp_gate = nn.Parameter(torch.full((H,), gate_init))

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x [..., n, heads, D], NeoX layout
        ang = pos.float()[..., None] * self.inv_freq
        cos, sin = ang.cos().unsqueeze(-2), ang.sin().unsqueeze(-2)
        half = self.D // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def time_embed(self, t: float) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(64, dtype=torch.float32) / 64)
        a = t * freqs
        return self.te2(F.silu(self.te0(torch.cat([a.sin(), a.cos()]))))

    def velocity(self, h: torch.Tensor, t: float, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """h [B, n, H] at positions pos [n]; c [K, H], one concept for the batch."""
        h_in = h
        h = h + self.time_embed(t)
        B, n, _ = h.shape
        K = c.shape[0]
        q = self.rope(self.q_norm(self.q_proj(self.pre_cross_norm(h)).view(B, n, self.n_head, self.D)), pos)
        k = self.rope(self.k_norm(self.k_proj(c).view(K, self.n_kv, self.D)), torch.arange(K))
        v = self.v_proj(c).view(K, self.n_kv, self.D)
        rep = self.n_head // self.n_kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = torch.einsum("bnhd,khd->bhnk", q, k) * self.D ** -0.5
        if self.cap:
            s = self.cap * torch.tanh(s / self.cap)
        o = torch.einsum("bhnk,khd->bnhd", s.softmax(-1), v).reshape(B, n, self.n_head * self.D)
        h = h + self.gate_scale * self.cross_gate * self.post_cross_norm(self.o_proj(o))
        x = self.pre_mlp_norm(h)
        g = self.gate_proj(x)
        act = F.gelu(g, approximate="tanh") if self.gelu else F.silu(g)
        h = h + self.gate_scale * self.mlp_gate * self.post_mlp_norm(self.down_proj(act * self.up_proj(x)))
        return h - h_in

    def steer(self, h0: torch.Tensor, c: torch.Tensor, flowtime: float, n_steps: int) -> torch.Tensor:
        """Euler integration from 0 to flowtime (FLAS_SPEC.md 3) of rows h0 [B, n, H] at 0..n-1."""
        pos = torch.arange(h0.shape[1])
        h, dt = h0, flowtime / n_steps
        for k in range(n_steps):
            h = h + dt * self.velocity(h, k * dt, c, pos)
        return h

    def released_state(self) -> dict[str, torch.Tensor]:
        """The weights under the released checkpoint's names, gates in the rows' units."""
        b = "blocks.0."
        out = {"time_embed.mlp.0.weight": self.te0.weight, "time_embed.mlp.0.bias": self.te0.bias,
               "time_embed.mlp.2.weight": self.te2.weight, "time_embed.mlp.2.bias": self.te2.bias,
               b + "cross_gate": self.gate_scale * self.cross_gate, b + "mlp_gate": self.gate_scale * self.mlp_gate}
        for name in ("pre_cross_norm", "post_cross_norm", "pre_mlp_norm", "post_mlp_norm"):
            out[f"{b}{name}.weight"] = getattr(self, name).weight
        for name in ("q_norm", "k_norm"):
            out[f"{b}cross_attn.{name}.weight"] = getattr(self, name).weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(self, name)
            out[f"{b}cross_attn.{name}.weight"] = lin.weight
            if lin.bias is not None:
                out[f"{b}cross_attn.{name}.bias"] = lin.bias
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{b}{name}.weight"] = getattr(self, name).weight
        return {k: v.detach().float().contiguous().clone() for k, v in out.items()}
