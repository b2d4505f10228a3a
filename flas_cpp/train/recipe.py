"""A training run's knobs, in one place: flas-train's options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Recipe:
    """The knobs of a run (flas-train --help says what each does); all of them are in the checkpoint."""
    layer: int | None = None      # None: two thirds of the way up the base's layers
    steps: int = 600
    batch: int = 8
    lr: float = 1e-3
    # T trained for: the strength at which the teacher's style is reached. Above the runtime's
    # usual 2, so that T = 2 steers just short of it, where the text stays fluent (docs/QUALITY.md)
    flowtime: float = 2.5
    n_steps: int = 3              # Euler steps, as the runtime integrates
    max_tokens: int = 32          # teacher continuation length
    samples: int = 4              # teacher continuations per prompt: the greedy one, the rest sampled
    sample_temperature: float = 0.8
    # Weight of the KL divergence to the teacher's own next-token distributions (the teacher read
    # in its context, unsteered) beside the cross-entropy of its tokens. Off by default: at 1 the
    # steered text was as fluent as the teacher's for every built-in concept, but it also wrote in
    # the language only about as often as the teacher does (docs/QUALITY.md, objective 7)
    kl_weight: float = 0.0
    seed: int = 0
    checkpoint_every: int = 25
