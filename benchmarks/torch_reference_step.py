"""Same-machine PyTorch anchor for the CPU training-step target (issue 4).

The official MATPAC/M2D step is eager PyTorch with timm ViT blocks. CPU speed
varies by more than 2x between the VMs this project runs on, so a speed-up
is only meaningful against PyTorch measured on the same machine, the same
hour. This script re-states the step's content (SPEC sections 2-5) in plain
PyTorch: ViT-B/16 student on CLS + 57 visible tokens, an independent EMA
teacher on CLS + 133 masked tokens, the 8 x 512 predictor on 191 tokens, the
K=2048 DINO heads with centering, decoupled Adam (0.9, 0.95, eps 1e-6, wd
0.05), gradient clipping 3.0, and the per-parameter EMA loops of the
official code. Attention uses `F.scaled_dot_product_attention` (timm's fused
path), the fastest eager form.

Not a dependency of matpac_jax: run it in its own environment.

  python -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy
  /tmp/tv/bin/python benchmarks/torch_reference_step.py --batch 4 [--method m2d] [--threads 2]
  /tmp/tv/bin/python benchmarks/torch_reference_step.py --batch 8 --dim 384 --heads 6
  python -m matpac_jax.bench --config=configs/matpac_as2m.py --per_device_batch=4 --config.model.dtype=float32
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_table(dim: int, grid_f: int, grid_t: int) -> torch.Tensor:
    """(1 + F*T, dim) fixed table, frequency-major tokens, CLS row zero (SPEC 2)."""
    def axis(pos, d):
        w = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
        a = np.outer(pos, w)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)
    f, t = np.meshgrid(np.arange(grid_f), np.arange(grid_t), indexing="ij")
    table = np.concatenate([axis(t.ravel(), dim // 2), axis(f.ravel(), dim // 2)], axis=1)
    return torch.tensor(np.concatenate([np.zeros((1, dim)), table]), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Encoder(nn.Module):
    def __init__(self, dim=768, depth=12, heads=12):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Head(nn.Module):
    def __init__(self, dim=768, hidden=2048, bottleneck=256, k=2048):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, k, bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


class MATPACStep(nn.Module):
    def __init__(self, method: str, grid_f=5, grid_t=38, dim=768, heads=12, pred_dim=512):
        super().__init__()
        self.method = method
        self.patch = nn.Conv2d(1, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("pos", sincos_table(dim, grid_f, grid_t)[None])
        self.register_buffer("pred_pos", sincos_table(pred_dim, grid_f, grid_t)[None])
        self.student, self.teacher = Encoder(dim, 12, heads), Encoder(dim, 12, heads)
        self.pred_in, self.pred_out = nn.Linear(dim, pred_dim), nn.Linear(pred_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, pred_dim) * 0.02)
        self.predictor = Encoder(pred_dim, 8, 16)
        if method == "matpac":
            self.head = Head(dim)
            self.teacher_head = copy.deepcopy(self.head)
            self.register_buffer("center", torch.zeros(1, 2048))
        for p in list(self.teacher.parameters()) + (
                list(self.teacher_head.parameters()) if method == "matpac" else []):
            p.requires_grad_(False)

    def forward(self, x, ratio=0.7):
        b = x.shape[0]
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos[:, 1:]  # f-major
        n = tokens.shape[1]
        keep = int(n * (1 - ratio))
        shuffle = torch.argsort(torch.rand(b, n), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        gather = lambda t, idx: torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))
        cls = (self.cls + self.pos[:, :1]).expand(b, -1, -1)
        vis = self.student(torch.cat([cls, gather(tokens, shuffle[:, :keep])], 1))
        with torch.no_grad():
            target = self.teacher(torch.cat([cls, gather(tokens, shuffle[:, keep:])], 1))[:, 1:]
        y = self.pred_in(vis)
        masks = self.mask_token.expand(b, n - keep, -1)
        y_grid = gather(torch.cat([y[:, 1:], masks], 1), restore)
        y = torch.cat([y[:, :1], y_grid], 1) + self.pred_pos
        y = self.pred_out(self.predictor(y))[:, 1:]
        pred = gather(y, shuffle[:, keep:])
        t = target
        if self.method == "m2d":
            t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, keepdim=True) + 1e-6)
        loss = (2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(t, dim=-1)).sum(-1)).mean()
        if self.method == "matpac":
            with torch.no_grad():
                logits_t = self.teacher_head(target)
                probs_t = F.softmax((logits_t - self.center) / 0.07, dim=-1)
                self.center.mul_(0.9).add_(0.1 * probs_t.mean(dim=(0, 1))[None])
            log_s = F.log_softmax(self.head(pred) / 0.1, dim=-1)
            loss = 0.5 * loss + 0.5 * (-(probs_t * log_s).sum(-1)).mean()
        return loss


def ema(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """The official per-parameter EMA loop."""
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        pt.data.mul_(m).add_((1 - m) * ps.detach().data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--method", choices=("matpac", "m2d"), default="matpac")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dim", type=int, default=768, help="encoder width (predictor stays 512)")
    p.add_argument("--heads", type=int, default=12)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MATPACStep(args.method, dim=args.dim, heads=args.heads)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.05)
    x = torch.randn(args.batch, 1, 80, 608)
    times = []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        if args.method == "matpac":
            ema(model.head, model.teacher_head, 0.998)
        opt.step()
        ema(model.student, model.teacher, 0.99995)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[2:])
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "method": args.method, "dim": args.dim, "batch": args.batch,
                      "step_s": round(step, 4),
                      "samples_per_s": round(args.batch / step, 3),
                      "params_M": round(sum(q.numel() for q in params) / 1e6, 1),
                      "loss": float(loss.detach())}, indent=1))


if __name__ == "__main__":
    main()
