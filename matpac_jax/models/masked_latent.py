"""The M2D / MATPAC networks (docs/SPEC.md sections 2-4, 11): the student (ViT
encoder, predictor, MATPAC's classification head, MATPAC++'s hypothesis
heads) and its EMA teacher."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.heads import DinoHead, HypothesisHeads
from matpac_jax.models.vit import Predictor, TransformerStack, ViTEncoder


class Student(nnx.Module):
    """Encoder (patch embed, CLS, blocks) + predictor (+ MATPAC head)."""

    def __init__(self, encoder: ViTEncoder, predictor: Predictor, head: DinoHead | None = None):
        self.encoder = encoder
        self.predictor = predictor
        self.head = nnx.data(head)  # data even when None, so a head can be set later

    @classmethod
    def create(cls, *, in_freq: int = 80, max_frames: int = 608, patch: int = 16,
               dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               pred_dim: int = 512, pred_depth: int = 8, pred_heads: int = 16,
               head_out_dim: int | None = 2048, head_hidden_dim: int = 2048,
               head_bottleneck_dim: int = 256, hypotheses: int = 1, dtype=jnp.float32,
               rngs: nnx.Rngs) -> "Student":
        """ViT-B defaults; `head_out_dim=None` gives M2D (no head);
        `hypotheses=K > 1` gives MATPAC++: the predictor's output Linear becomes
        K heads and it returns (B, n, K, D)."""
        enc = ViTEncoder(in_freq=in_freq, max_frames=max_frames, patch=patch, dim=dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         dtype=dtype, rngs=rngs)
        pred = Predictor(grid_f=enc.grid_f, grid_t=enc.grid_t, dim=dim, pred_dim=pred_dim,
                         depth=pred_depth, num_heads=pred_heads, mlp_ratio=mlp_ratio,
                         dtype=dtype, rngs=rngs)
        if hypotheses > 1:
            pred.pred = HypothesisHeads(pred_dim, dim, hypotheses, dtype=dtype, rngs=rngs)
        head = None
        if head_out_dim is not None:
            head = DinoHead(dim, head_out_dim, head_hidden_dim, head_bottleneck_dim,
                            dtype=dtype, rngs=rngs)
        return cls(enc, pred, head)


class Teacher(nnx.Module):
    """EMA target: its state mirrors `student.encoder.stack` and `student.head`."""

    def __init__(self, stack: TransformerStack, head: DinoHead | None = None):
        self.stack = stack
        self.head = nnx.data(head)  # data even when None, so a head can be set later

    @classmethod
    def create(cls, student: Student, *, rngs: nnx.Rngs) -> "Teacher":
        """Initialised as the official code leaves it: blocks drawn
        independently of the student's (both codes); the head's MLP drawn
        independently from N(0, 0.02) and its last layer equal to the
        student's. (MATPAC copies the student head while its MLP still has
        that N(0, 0.02) init, then re-initialises the student's MLP with
        xavier-uniform; weight norm's `v` and `g` are not touched by it.)
        """
        s = student.encoder.stack
        stack = TransformerStack(s.dim, s.depth, s.num_heads, s.mlp_ratio,
                                 dtype=s.dtype, rngs=rngs)
        head = None
        if student.head is not None:
            h = student.head
            head = DinoHead(h.fc1.in_features, h.last_g.shape[0], h.fc1.out_features,
                            h.fc3.out_features, mlp_init=nnx.initializers.normal(0.02),
                            dtype=h.dtype, rngs=rngs)
            head.last_v.set_value(h.last_v[...])
            head.last_g.set_value(h.last_g[...])
        return cls(stack, head)
