"""PyTorch restatement of the official MATPAC / M2D training step, of our
BEATs iteration-1 step, and of the official M2D / BEATs inference paths:

  trajectory IN.npz OUT.npz   run 50 updates from the inputs that
                              benchmarks/trajectory.py wrote (our initial
                              weights, loader crops, masks) and add per-step
                              metrics and the final weights: the fixture of
                              tests/test_trajectory.py.
  bench [--method ...]        time one step of the ViT-B (or BEATs) model: the
                              same-machine anchor of docs/BENCHMARKS.md
                              (--serve: for compare_torch.py; --profile: op
                              time per phase and kind).
  embed --checkpoint F --waves W.npy [--method m2d|beats] [--batch B]
                              time the official inference path's clip
                              embeddings of an official checkpoint
                              (--serve: for compare_torch.py --mode=embed).
  checkpoints DIR             random ViT-B weights in the official M2D and
                              BEATs layouts (what --mode=embed compares on).

Not a dependency of matpac_jax: it runs in its own environment.

  python -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy
  /tmp/tv/bin/python benchmarks/torch_reference.py bench --method matpac --batch 4 --threads 2

benchmarks/compare_torch.py runs `bench --serve` (or `embed --serve`)
interleaved with our step (or our embeddings). `embed` needs nnAudio (and
scipy) next to torch: the M2D portable runtime's front end.

What is restated, from the official code (docs/SPEC.md sections 2-5):
- MATPAC (aurianworld/matpac on fairseq): the teacher branch, the centered
  and sharpened teacher head and the EMA of encoder and head run inside the
  forward, EMA on the pre-update student and not at update 0, decay annealed
  over `total_steps` (`get_annealed_rate`); loss 0.5 pred + 0.5 cls;
  fairseq's `clip_grad_norm_` and fairseq's `Adam` (eps added to sqrt(v)
  before bias correction, decoupled weight decay on every parameter); the
  fairseq cosine schedule, lr of update n = schedule(n).
- M2D (nttcslab/m2d on MAE): standardised targets (unbiased variance), MAE's
  per-iteration `adjust_learning_rate`, `torch.nn.utils.clip_grad_norm_`,
  `torch.optim.AdamW` with timm's no-decay group (1-D and biases), and the
  target EMA after the optimiser step with `ema_decay_sched` (step /
  (total - 1)).
- BEATs iteration 1 (no official training code; our design, docs/SPEC.md
  section 8): the official backbone (DeepNorm post-LN, gated relative bias,
  weight-normed conv positional embedding, layer-wise gradient decay), a
  frozen random-projection tokenizer, a label predictor over the full grid,
  cross-entropy on masked patches, AdamW with no decay on 1-D parameters.
Parameters are held in our layout (kernels (in, out), our names) so that the
inputs load without a mapping table; every op is written out here.

The inference paths (official code that cannot be vendored, restated with
the same ops; `official_params` maps their state dicts to this layout):
- M2D's portable runtime (nttcslab/m2d examples/portable_m2d.py):
  `get_scene_embeddings`, nnAudio front end, Python loop over 608-frame chunks.
- BEATs.py `extract_features` (microsoft/unilm beats): Python loop of Kaldi
  fbanks (torchaudio.compliance.kaldi.fbank, restated: torchaudio has no
  build for every torch), the encoder with the official attention op order.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Parameters: a flat {our path: tensor} dict, and small functional layers on it.


class Params(dict):
    """{path: tensor}; `sub(prefix)` is a view of the keys under `prefix/`."""

    def sub(self, prefix: str) -> "Params":
        p = prefix.rstrip("/") + "/"
        return Params({k[len(p):]: v for k, v in self.items() if k.startswith(p)})


def linear(p: Params, x, name: str):
    """nn.Linear's F.linear (one addmm with the bias; matmul + add is ~10 % slower)."""
    return F.linear(x, p[f"{name}/kernel"].T, p.get(f"{name}/bias"))


def layer_norm(p: Params, x, name: str, eps: float):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}/scale"], p[f"{name}/bias"], eps)


def gelu(x):
    return F.gelu(x)  # exact erf GELU, as timm and fairseq


def sincos_table(grid_f: int, grid_t: int, dim: int) -> torch.Tensor:
    """(1 + F*T, dim), frequency-major tokens, CLS row zero; first half time, second frequency."""
    def axis(pos, d):
        w = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
        a = np.outer(pos, w)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)
    f, t = np.meshgrid(np.arange(grid_f), np.arange(grid_t), indexing="ij")
    table = np.concatenate([axis(t.ravel(), dim // 2), axis(f.ravel(), dim // 2)], axis=1)
    return torch.tensor(np.concatenate([np.zeros((1, dim)), table]), dtype=torch.float32)


# ----------------------------------------------------------------------------
# ViT (timm Block as both official codes use it)


def vit_block(p: Params, x, heads: int):
    b, n, d = x.shape
    h = layer_norm(p, x, "norm1", 1e-6)
    q, k, v = linear(p, h, "attn/qkv").reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
    x = x + linear(p, a, "attn/proj")
    h = layer_norm(p, x, "norm2", 1e-6)
    return x + linear(p, gelu(linear(p, h, "mlp/fc1")), "mlp/fc2")


def vit_stack(p: Params, x, heads: int):
    i = 0
    while f"blocks/{i}/norm1/scale" in p:
        x = vit_block(p.sub(f"blocks/{i}"), x, heads)
        i += 1
    return layer_norm(p, x, "norm", 1e-6)


def patch_embed(p: Params, x, dim: int):
    """Conv2d 16x16 stride 16 over (B, 1, F, T), flattened frequency-major."""
    w = p["kernel"].T.reshape(dim, 1, 16, 16)
    y = F.conv2d(x[:, None], w, p.get("bias"), stride=16)
    return y.flatten(2).transpose(1, 2)


def gather(t, ids):
    return torch.gather(t, 1, ids[..., None].expand(-1, -1, t.shape[-1]))


def dino_head(p: Params, x):
    x = gelu(linear(p, x, "fc1"))
    x = gelu(linear(p, x, "fc2"))
    x = F.normalize(linear(p, x, "fc3"), dim=-1, eps=1e-12)
    v = p["last_v"].T                                  # weight_v (K, bottleneck)
    w = p["last_g"][:, None] * v / v.norm(dim=1, keepdim=True)
    return x @ w.T


class MaskedLatent:
    """The M2D / MATPAC forward on a batch and a mask; returns losses and metrics."""

    def __init__(self, params: Params, cfg: dict):
        m = cfg["model"]
        self.p, self.cfg, self.m = params, cfg, m
        self.grid_f, self.grid_t = m["in_freq"] // 16, cfg["data"]["crop_frames"] // 16
        self.pos = sincos_table(self.grid_f, self.grid_t, m["dim"])[None]
        self.pred_pos = sincos_table(self.grid_f, self.grid_t, m["pred_dim"])[None]
        self.matpac = cfg["method"] == "matpac" and cfg["objective"]["alpha"] < 1

    def forward(self, x, ids_shuffle, teacher_temp):
        p, m, o = self.p, self.m, self.cfg["objective"]
        s = p.sub("student")
        tokens = patch_embed(s.sub("encoder/patch_embed"), x, m["dim"]) + self.pos[:, 1:]
        b, n, _ = tokens.shape
        keep = int(n * (1 - o["mask_ratio"]))
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        cls = (s["encoder/cls_token"] + self.pos[:, :1]).expand(b, -1, -1)
        z_v = vit_stack(s.sub("encoder/stack"), torch.cat([cls, gather(tokens, ids_shuffle[:, :keep])], 1),
                        m["num_heads"])
        with torch.no_grad():  # teacher: CLS + masked tokens, official order
            z_m = vit_stack(p.sub("teacher/stack"),
                            torch.cat([cls, gather(tokens, ids_shuffle[:, keep:])], 1),
                            m["num_heads"])[:, 1:]
        # predictor (the official "decoder")
        pr = s.sub("predictor")
        y = linear(pr, z_v, "embed")
        masks = pr["mask_token"].expand(b, n - keep, -1)
        y_grid = gather(torch.cat([y[:, 1:], masks], 1), ids_restore)
        y = torch.cat([y[:, :1], y_grid], 1) + self.pred_pos
        y = vit_stack(pr.sub("stack"), y, m["pred_heads"])[:, 1:]
        z_hat = linear(pr, gather(y, ids_shuffle)[:, keep:], "pred")
        target = z_m
        if o["standardize_target"]:
            target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(
                target.var(-1, keepdim=True) + 1e-6)
        loss_pred = (2 - 2 * (F.normalize(z_hat, dim=-1) * F.normalize(target, dim=-1)).sum(-1))
        out = {"loss_pred": loss_pred.mean()}
        if not self.matpac:
            out["loss"] = out["loss_pred"]
            return out
        logits_s = dino_head(s.sub("head"), z_hat)
        with torch.no_grad():
            logits_t = dino_head(p.sub("teacher/head"), z_m)
            probs_t = F.softmax((logits_t - p["center"]) / teacher_temp, dim=-1)
            mean_p = probs_t.mean(dim=(0, 1))
            new_center = p["center"] * o["center_momentum"] + mean_p[None, None] * (
                1 - o["center_momentum"])
        loss_cls = -(probs_t * F.log_softmax(logits_s / o["student_temp"], dim=-1)).sum(-1)
        out.update(loss_cls=loss_cls.mean(), new_center=new_center,
                   teacher_perplexity=torch.exp(-(mean_p * torch.log(mean_p + 1e-12)).sum()))
        out["loss"] = o["alpha"] * out["loss_pred"] + (1 - o["alpha"]) * out["loss_cls"]
        c = new_center.reshape(-1)
        out["center_entropy"] = -(c * torch.log(c + 1e-12)).sum()
        return out


# ----------------------------------------------------------------------------
# BEATs backbone (official maths) and our iteration-1 objective


class GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def bucket(rel, num_buckets: int, max_distance: int):
    half = num_buckets // 2
    max_exact = half // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return out + torch.where(n < max_exact, n, large)


def conv_pos(p: Params, x, groups: int):
    v, g = p["weight_v"], p["weight_g"]               # (K, D/G, D), (K,)
    w = v * (g / v.pow(2).sum(dim=(1, 2)).sqrt())[:, None, None]
    k = w.shape[0]
    y = F.conv1d(x.transpose(1, 2), w.permute(2, 1, 0), p["bias"], padding=k // 2, groups=groups)
    if k % 2 == 0:
        y = y[:, :, :-1]
    return gelu(y).transpose(1, 2)


def beats_attention(p: Params, x, pos_bias, heads: int):
    b, n, d = x.shape
    dh = d // heads
    split = lambda t: t.reshape(b, n, heads, dh).transpose(1, 2)  # (B, H, n, dh)
    q, k, v = (split(linear(p, x, f"{name}_proj")) for name in ("q", "k", "v"))
    g = torch.sigmoid(linear(p, q, "grep_linear").reshape(b, heads, n, 2, 4).sum(-1))
    gate = g[..., 0] * (g[..., 1] * p["grep_a"][None, :, None] - 1.0) + 2.0   # (B, H, n)
    bias = gate[..., None] * pos_bias
    a = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + bias, dim=-1) @ v
    return linear(p, a.transpose(1, 2).reshape(b, n, d), "out_proj")


def beats_encoder(p: Params, x, cfg: dict, layers: int, heads: int, positions=None,
                  num_patches=None, grad_decay: float = 1.0, attention=beats_attention):
    """Official `TransformerEncoder` (post-LN DeepNorm) on all tokens, or on the
    kept ones with their grid `positions` (conv on the zero-filled full grid)."""
    b, n, d = x.shape
    if positions is None:
        x = x + conv_pos(p.sub("pos_conv"), x, cfg["conv_pos_groups"])
        positions = torch.arange(n)[None]
    else:
        full = torch.zeros(b, num_patches, d)
        full = full.scatter(1, positions[..., None].expand(-1, -1, d), x)
        x = x + gather(conv_pos(p.sub("pos_conv"), full, cfg["conv_pos_groups"]), positions)
    x = layer_norm(p, x, "layer_norm", 1e-5)
    rel = positions[:, None, :] - positions[:, :, None]
    table = p["layers/0/self_attn/relative_attention_bias"]
    # F.embedding as the official nn.Embedding (its backward is a dense scatter-add)
    pos_bias = F.embedding(bucket(rel, cfg["num_buckets"], cfg["max_distance"]), table
                           ).permute(0, 3, 1, 2)
    alpha = (2 * layers) ** 0.25
    for i in range(layers):
        lp = p.sub(f"layers/{i}")
        if grad_decay != 1.0:
            x = GradMultiply.apply(x, grad_decay)
        a = attention(lp.sub("self_attn"), x, pos_bias, heads)
        x = layer_norm(lp, x * alpha + a, "self_attn_layer_norm", 1e-5)
        f = linear(lp, gelu(linear(lp, x, "fc1")), "fc2")
        x = layer_norm(lp, x * alpha + f, "final_layer_norm", 1e-5)
    return x


def patchify_time_major(x):
    b, t, f = x.shape
    x = x[:, : t // 16 * 16].reshape(b, t // 16, 16, f // 16, 16)
    return x.permute(0, 1, 3, 2, 4).reshape(b, (t // 16) * (f // 16), 256)


class BeatsIter1:
    def __init__(self, params: Params, cfg: dict):
        self.p, self.cfg, self.m, self.o = params, cfg, cfg["model"], cfg["objective"]

    def forward(self, x, keep, masked):
        p, m, o = self.p, self.m, self.o
        with torch.no_grad():  # frozen random-projection tokenizer
            z = F.normalize(patchify_time_major(x) @ p["tokenizer/projection"], dim=-1)
            labels = (z @ p["tokenizer/codebook"].T).argmax(-1)
        enc = p.sub("student/encoder")
        tokens = layer_norm(enc, patchify_time_major(x) @ enc["patch_embedding/kernel"],
                            "layer_norm", 1e-5)
        if "post_extract_proj/kernel" in enc:
            tokens = linear(enc, tokens, "post_extract_proj")
        n = tokens.shape[1]
        visible = beats_encoder(enc.sub("encoder"), gather(tokens, keep), m, m["encoder_layers"],
                                m["encoder_attention_heads"], positions=keep, num_patches=n,
                                grad_decay=m["layer_wise_gradient_decay_ratio"])
        pr = p.sub("student/predictor")
        b, _, d = visible.shape
        grid = pr["mask_emb"].expand(b, n, d).scatter(1, keep[..., None].expand(-1, -1, d), visible)
        y = beats_encoder(pr.sub("encoder"), grid, m, o["predictor_layers"], o["predictor_heads"])
        logits = linear(pr, gather(y, masked), "head")
        target = torch.gather(labels, 1, masked)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        counts = torch.bincount(labels.reshape(-1), minlength=o["num_codes"]).float()
        q = counts / counts.sum()
        return {"loss": loss,
                "accuracy": (logits.argmax(-1) == target).float().mean(),
                "label_perplexity": torch.exp(-(q[q > 0] * q[q > 0].log()).sum()),
                "label_used_codes": (counts > 0).sum().float()}


# ----------------------------------------------------------------------------
# Official inference paths: clip embeddings of 16 kHz clips (compare_torch.py --mode=embed)


def official_params(sd: dict) -> Params:
    """An official state dict in this file's layout: '.' -> '/', Linear `weight`
    -> `kernel` (a transposed view), conv `weight` -> a (in, out) `kernel`,
    LayerNorm `weight` -> `scale`; BEATs' weight-normed pos conv to (K, D/G, D)."""
    p = Params()
    for key, v in sd.items():
        path = key.replace(".", "/").replace("pos_conv/0/", "pos_conv/")
        if path.endswith("relative_attention_bias/weight"):
            path = path[:-len("/weight")]
        elif path.endswith("weight_v"):
            v = v.permute(2, 1, 0)
        elif path.endswith("weight_g") or path.endswith("grep_a"):
            v = v.reshape(-1)
        elif path.endswith("/weight"):
            path = path[:-len("weight")] + ("scale" if v.ndim == 1 else "kernel")
            v = v if v.ndim == 1 else v.reshape(v.shape[0], -1).T
        p[path] = v
    return p


def m2d_scene_embeddings(sd: dict):
    """nttcslab/m2d examples/portable_m2d.py `PortableM2D.get_scene_embeddings`
    (flat_features False): nnAudio mel (its conv1d STFT), log(x + eps),
    (x - mean) / std, `encode_lms` (a Python loop over chunks of the table's
    frames, the last one padded to a multiple of 16, each chunk through
    `LocalViT.forward_encoder`, `b (f t) d -> b t (f d)`), mean over time."""
    import nnAudio.features

    to_spec = nnAudio.features.MelSpectrogram(
        sr=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80, fmin=50, fmax=8000,
        center=True, power=2, verbose=False)
    p, pos = official_params(sd), sd["pos_embed"]
    mean, std = sd["norm_stats"].tolist()
    dim, fbins = pos.shape[-1], 80 // 16
    unit = (pos.shape[1] - 1) // fbins * 16                     # input_size[1]: 608

    def forward_encoder(x):
        t = patch_embed(p.sub("patch_embed/proj"), x, dim)
        pe = pos[:, 1:]
        if t.shape[1] < pe.shape[1]:  # shorten pos_embed for a short input
            pe = pe.reshape(1, fbins, -1, dim)[:, :, :t.shape[1] // fbins].reshape(1, -1, dim)
        cls = (p["cls_token"] + pos[:, :1]).expand(t.shape[0], -1, -1)
        return vit_stack(p, torch.cat([cls, t + pe], 1), dim // 64)

    def scene(audio):
        x = ((to_spec(audio) + torch.finfo().eps).log() - mean) / std     # (B, 80, T)
        n_chunk = (x.shape[-1] + unit - 1) // unit
        x = F.pad(x, (0, (16 - x.shape[-1] % unit % 16) % 16))
        embeddings = []
        for i in range(n_chunk):
            e = forward_encoder(x[..., i * unit:(i + 1) * unit])[:, 1:]
            b, n, d = e.shape
            embeddings.append(e.reshape(b, fbins, n // fbins, d).transpose(1, 2).reshape(
                b, n // fbins, fbins * d))
        return torch.cat(embeddings, 1).mean(1)

    return scene


def kaldi_mel_banks(num_bins: int = 128, low: float = 20.0, high: float = 8000.0):
    """torchaudio.compliance.kaldi.get_mel_banks (no VTLN), 512-point FFT at 16 kHz."""
    mel = lambda f: 1127.0 * torch.log(1.0 + f / 700.0)
    lo, hi = mel(torch.tensor(low)), mel(torch.tensor(high))
    delta = (hi - lo) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left, center, right = lo + b * delta, lo + (b + 1.0) * delta, lo + (b + 2.0) * delta
    m = mel(16000 / 512 * torch.arange(256)).unsqueeze(0)
    return torch.clamp(torch.min((m - left) / (center - left), (right - m) / (right - center)),
                       min=0.0)


def kaldi_fbank(wave):
    """torchaudio.compliance.kaldi.fbank(wave (1, N), num_mel_bins=128,
    sample_frequency=16000, frame_length=25, frame_shift=10) as BEATs calls it,
    with torchaudio's defaults: snip_edges, dither 0, DC removal, raw log energy
    (computed, then unused), pre-emphasis 0.97, povey window, zero-padded to 512,
    power spectrum, mel banks built per call, log floored at float32 eps: (T, 128)."""
    eps = torch.tensor(torch.finfo(torch.float32).eps)
    frames = wave[0].unfold(0, 400, 160)
    frames = frames - frames.mean(1, keepdim=True)
    torch.max(frames.pow(2).sum(1), eps).log()  # signal_log_energy (use_energy=False)
    prev = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = (frames - 0.97 * prev) * torch.hann_window(400, periodic=False).pow(0.85)
    power = torch.fft.rfft(F.pad(frames, (0, 112))).abs().pow(2.0)
    mel = torch.mm(power, F.pad(kaldi_mel_banks(), (0, 1)).T)
    return torch.max(mel, eps).log()


def beats_attention_official(p: Params, x, pos_bias, heads: int):
    """BEATs.py `MultiheadAttention.forward` in its op order: q scaled by
    dh^-0.5 / 32, logits shifted by their row max and times 32, the gate from
    the unscaled q, bias added, softmax (beats_attention: the same maths)."""
    b, n, d = x.shape
    dh = d // heads
    split = lambda t: t.reshape(b, n, heads, dh).transpose(1, 2)  # (B, H, n, dh)
    q = split(linear(p, x, "q_proj") * (dh ** -0.5) * (1 / 32))
    k, v = split(linear(p, x, "k_proj")), split(linear(p, x, "v_proj"))
    w = q @ k.transpose(-1, -2)
    w = (w - w.max(dim=-1, keepdim=True)[0]) * 32
    g = torch.sigmoid(linear(p, q * 32 / dh ** -0.5, "grep_linear").reshape(b, heads, n, 2, 4)
                      .sum(-1))
    gate = g[..., 0] * (g[..., 1] * p["grep_a"][None, :, None] - 1.0) + 2.0   # (B, H, n)
    a = F.softmax(w + gate[..., None] * pos_bias, dim=-1) @ v
    return linear(p, a.transpose(1, 2).reshape(b, n, d), "out_proj")


def beats_scene_embeddings(ckpt: dict):
    """microsoft/unilm beats/BEATs.py `extract_features` (no padding mask):
    `preprocess` (a Python loop of Kaldi fbanks of waveform * 2**15, then
    (x - 15.41663) / (2 * 6.55582)), patch Conv2d, LayerNorm,
    post_extract_proj, the encoder on all patches; mean over patches."""
    cfg, p = ckpt["cfg"], official_params(ckpt["model"])
    dim, e = cfg["encoder_embed_dim"], cfg["embed_dim"]

    def scene(audio):
        fbank = torch.stack([kaldi_fbank(w.unsqueeze(0) * 2 ** 15) for w in audio])
        fbank = (fbank - 15.41663) / (2 * 6.55582)
        x = layer_norm(p, patch_embed(p.sub("patch_embedding"), fbank, e), "layer_norm", 1e-5)
        if "post_extract_proj/kernel" in p:
            x = linear(p, x, "post_extract_proj")
        x = beats_encoder(p.sub("encoder"), x, cfg, cfg["encoder_layers"],
                          cfg["encoder_attention_heads"], attention=beats_attention_official)
        assert x.shape[-1] == dim
        return x.mean(1)

    return scene


def make_checkpoints(out_dir: str, dim: int = 768, layers: int = 12, embed: int = 512,
                     seed: int = 0) -> dict:
    """Random weights in the official M2D (ViT-B, 80 x 608, `norm_stats`) and
    BEATs (`{'cfg', 'model'}`) layouts, torch.save'd: {method: path}."""
    import os

    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale: torch.randn(*shape, generator=g) * scale

    def lin(sd, name, din, dout):
        sd[f"{name}.weight"] = rand(dout, din, scale=math.sqrt(2 / (din + dout)))
        sd[f"{name}.bias"] = rand(dout, scale=0.02)

    def ln(sd, name, d):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + rand(d, scale=0.1), rand(d, scale=0.1)

    heads = dim // 64
    m2d = {"cls_token": rand(1, 1, dim, scale=0.02), "pos_embed": sincos_table(5, 38, dim)[None],
           "patch_embed.proj.weight": rand(dim, 1, 16, 16, scale=1 / 16),
           "patch_embed.proj.bias": rand(dim, scale=0.02), "norm_stats": torch.tensor([-7.1, 4.2])}
    for i in range(layers):
        b = f"blocks.{i}"
        ln(m2d, f"{b}.norm1", dim), lin(m2d, f"{b}.attn.qkv", dim, 3 * dim)
        lin(m2d, f"{b}.attn.proj", dim, dim), ln(m2d, f"{b}.norm2", dim)
        lin(m2d, f"{b}.mlp.fc1", dim, 4 * dim), lin(m2d, f"{b}.mlp.fc2", 4 * dim, dim)
    ln(m2d, "norm", dim)
    cfg = {"input_patch_size": 16, "embed_dim": embed, "encoder_layers": layers,
           "encoder_embed_dim": dim, "encoder_ffn_embed_dim": 4 * dim,
           "encoder_attention_heads": heads, "conv_bias": False, "activation_fn": "gelu",
           "layer_norm_first": False, "deep_norm": True, "dropout": 0.0,
           "attention_dropout": 0.0, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
           "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
           "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800,
           "gru_rel_pos": True, "layer_wise_gradient_decay_ratio": 0.6, "finetuned_model": False}
    beats = {"patch_embedding.weight": rand(embed, 1, 16, 16, scale=1 / 16)}
    ln(beats, "layer_norm", embed), lin(beats, "post_extract_proj", embed, dim)
    v = rand(dim, dim // 16, 128, scale=math.sqrt(4 / (128 * dim)))
    beats |= {"encoder.pos_conv.0.weight_v": v, "encoder.pos_conv.0.bias": rand(dim, scale=0.02),
              "encoder.pos_conv.0.weight_g": v.pow(2).sum((0, 1)).sqrt()[None, None]}
    ln(beats, "encoder.layer_norm", dim)
    table = rand(320, heads, scale=0.1)  # shared by all layers; torch saves it under each
    for i in range(layers):
        b = f"encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(beats, f"{b}.self_attn.{name}", dim, dim)
        lin(beats, f"{b}.self_attn.grep_linear", dim // heads, 8)
        beats[f"{b}.self_attn.grep_a"] = 1 + rand(1, heads, 1, 1, scale=0.1)
        beats[f"{b}.self_attn.relative_attention_bias.weight"] = table
        ln(beats, f"{b}.self_attn_layer_norm", dim)
        lin(beats, f"{b}.fc1", dim, 4 * dim), lin(beats, f"{b}.fc2", 4 * dim, dim)
        ln(beats, f"{b}.final_layer_norm", dim)
    paths = {"m2d": os.path.join(out_dir, "m2d_vit_base-80x608p16x16.pth"),
             "beats": os.path.join(out_dir, "BEATs_random.pt")}
    torch.save(m2d, paths["m2d"])
    torch.save({"cfg": cfg, "model": beats}, paths["beats"])
    return paths


# ----------------------------------------------------------------------------
# Official optimisation pieces


def warmup_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    """fairseq `cosine` (warmup_init_lr = min_lr = 0) and MAE `adjust_learning_rate`
    with epochs = steps: both linear from 0, then half-cosine to 0 at `total`."""
    if step < warmup:
        return peak * step / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def clip_grad_norm(params, max_norm: float) -> float:
    """fairseq `clip_grad_norm_` = torch `clip_grad_norm_`: norm of all grads,
    grads times min(1, max / (norm + 1e-6)); returns the pre-clip norm."""
    grads = [q.grad for q in params if q.grad is not None]
    norm = torch.norm(torch.stack([torch.norm(g, 2, dtype=torch.float32) for g in grads]))
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1)
        for g in grads:
            g.mul_(coef)
    return float(norm)


class FairseqAdam:
    """fairseq.optim.adam.Adam (non-fused path): decoupled decay, eps on sqrt(v)."""

    def __init__(self, params, betas, eps, weight_decay):
        self.params, (self.b1, self.b2), self.eps, self.wd = list(params), betas, eps, weight_decay
        self.m = [torch.zeros_like(q) for q in self.params]
        self.v = [torch.zeros_like(q) for q in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float):
        self.t += 1
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        step_size = lr * math.sqrt(bc2) / bc1
        for q, m, v in zip(self.params, self.m, self.v):
            g = q.grad
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = v.sqrt().add_(self.eps)
            if self.wd:
                q.add_(q, alpha=-self.wd * lr)
            q.addcdiv_(m, denom, value=-step_size)


def adamw_groups(named, weight_decay: float):
    """timm `add_weight_decay`: no decay for 1-D parameters and biases."""
    decay = [q for k, q in named if q.ndim > 1 and not k.endswith("/bias")]
    rest = [q for k, q in named if not (q.ndim > 1 and not k.endswith("/bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def annealed(start, end, step, total):
    """fairseq `get_annealed_rate` (MATPAC)."""
    if step >= total:
        return end
    return end - (end - start) * (1 - step / total)


@torch.no_grad()
def ema(params: Params, teacher: str, student: str, decay: float):
    for k in [k for k in params if k.startswith(teacher + "/")]:
        t, s = params[k], params[student + k[len(teacher):]]
        t.mul_(decay).add_(s, alpha=1 - decay)


# ----------------------------------------------------------------------------
# The trajectory


def _batch(inputs, cfg, step: int):
    """The crops our loader cut at `step`, normalised as the loader does."""
    from_front = {"matpac": (-7.056, 4.193), "m2d": (-7.1, 4.2), "beats": (15.41663, 2 * 6.55582)}
    mean, std = from_front[cfg["data"]["frontend"]]
    scale = np.float32(1.0 / std)
    add = np.float32(-mean) * scale
    crop = cfg["data"]["crop_frames"]
    rows = []
    for clip, start in inputs["crops"][step]:
        c = inputs["clips"][clip].astype(np.float32)
        c = c[:, start:start + crop] if cfg["data"]["frontend"] != "beats" else c[start:start + crop]
        rows.append(c * scale + add)
    return torch.tensor(np.stack(rows))


def trajectory(inputs: dict, log=print) -> dict[str, np.ndarray]:
    cfg = json.loads(str(inputs["config"]))
    method, o, opt = cfg["method"], cfg["objective"], cfg["opt"]
    total = cfg["total_steps"]
    params = Params({k[len("init/"):]: torch.tensor(np.asarray(inputs[k]), dtype=torch.float32
                                                    if inputs[k].dtype != np.int32 else None)
                     for k in inputs if k.startswith("init/")})
    named = [(k, q) for k, q in params.items() if k.startswith("student/")]
    for _, q in named:
        q.requires_grad_(True)
    trainable = [q for _, q in named]
    if method == "matpac":
        optimizer = FairseqAdam(trainable, (opt["b1"], opt["b2"]), opt["eps"], opt["weight_decay"])
        model = MaskedLatent(params, cfg)
    else:
        optimizer = torch.optim.AdamW(
            adamw_groups(named, opt["weight_decay"]) if opt["decay_exclude_1d"]
            else [{"params": trainable, "weight_decay": opt["weight_decay"]}],
            lr=0.0, betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
        model = MaskedLatent(params, cfg) if method == "m2d" else BeatsIter1(params, cfg)
    records: dict[str, list] = {}
    for step in range(total):
        x = _batch(inputs, cfg, step)
        lr = warmup_cosine(step, opt["lr"], opt["warmup_steps"], total)
        rec = {"lr": lr}
        if method == "beats_mam":
            n_keep = inputs["masks"].shape[2] - int(inputs["masks"].shape[2] * o["mask_ratio"])
            ids = torch.tensor(inputs["masks"][step]).long()
            out = model.forward(x, ids[:, :n_keep], ids[:, n_keep:])
        else:
            temp = annealed(o["teacher_temp_start"], o["teacher_temp_end"], step,
                            o["teacher_temp_warmup_steps"])
            out = model.forward(x, torch.tensor(inputs["masks"][step]).long(), temp)
        if method == "matpac":
            rec["teacher_temp"] = temp
            with torch.no_grad():
                params["center"].copy_(out.pop("new_center"))
            # EMA inside the forward, on the pre-update student, not at update 0
            enc_m = annealed(o["ema_start"], o["ema_end"], step, total)
            head_m = annealed(o["head_ema_start"], o["head_ema_end"], step, total)
            if step > 0:
                if head_m < 1:
                    ema(params, "teacher/head", "student/head", head_m)
                ema(params, "teacher/stack", "student/encoder/stack", enc_m)
            rec.update(ema_momentum=enc_m, head_ema_momentum=head_m)
        for q in trainable:
            q.grad = None
        out["loss"].backward()
        rec["grad_norm"] = clip_grad_norm(trainable, opt["clip_grad_norm"])
        if method == "matpac":
            optimizer.step(lr)
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
        if method == "m2d":  # update_target_network after the step, ema_decay_sched
            m = o["ema_start"] + (o["ema_end"] - o["ema_start"]) * step / (total - 1)
            ema(params, "teacher/stack", "student/encoder/stack", m)
            rec["ema_momentum"] = m
        for k, v in out.items():
            rec[k] = float(v)
        for k, v in rec.items():
            records.setdefault(k, []).append(v)
        if step % 10 == 0 or step == total - 1:
            log(f"step {step + 1}/{total} " + " ".join(f"{k}={v:.5g}" for k, v in rec.items()))
    result = {f"steps/{k}": np.asarray(v, np.float64) for k, v in records.items()}
    result |= {f"final/{k}": v.detach().numpy() for k, v in params.items()}
    return result


# ----------------------------------------------------------------------------
# The speed anchor


def bench_step(args, phases=None):
    """(step, info): `step()` runs one training step of the ViT-B MATPAC / M2D or
    the BEATs iter1 model on random inputs (new masks each call), as the
    official loops order it; `info` says what was built. `phases(name)` (a
    context manager: the profiler's record_function) wraps the forward,
    backward and update."""
    phases = phases or (lambda name: contextlib.nullcontext())
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if args.method in ("matpac", "m2d"):
        cfg = {"method": args.method, "data": {"crop_frames": 608, "frontend": args.method},
               "model": {"in_freq": 80, "dim": args.dim, "num_heads": args.heads,
                         "pred_dim": 512, "pred_heads": 16},
               "objective": {"mask_ratio": 0.7, "alpha": 0.5 if args.method == "matpac" else 1.0,
                             "standardize_target": args.method == "m2d", "student_temp": 0.1,
                             "center_momentum": 0.9}}
        params = _random_vit_params(rng, args.dim, 12, 512, 8, args.method == "matpac")
        model = MaskedLatent(params, cfg)
        x = torch.randn(args.batch, 80, 608)
        n = 5 * 38

        def fwd():
            ids = torch.argsort(torch.rand(args.batch, n), dim=1)
            return model.forward(x, ids, 0.07)
    else:  # BEATs iter1 as configs/beats_iter1_as2m.py: 992 frames, 496 patches, 75 % masked
        cfg = {"model": {"conv_pos_groups": 16, "num_buckets": 320, "max_distance": 800,
                         "encoder_layers": 12, "encoder_attention_heads": 12,
                         "layer_wise_gradient_decay_ratio": 0.6},
               "objective": {"predictor_layers": 3, "predictor_heads": 12, "num_codes": 1024}}
        params = _random_beats_params(rng, 768, 12, 3, 1024)
        model = BeatsIter1(params, cfg)
        x = torch.randn(args.batch, 992, 128)
        n = 62 * 8
        n_keep = n - int(n * 0.75)

        def fwd():
            ids = torch.argsort(torch.rand(args.batch, n), dim=1)
            return model.forward(x, ids[:, :n_keep], ids[:, n_keep:])
    named = [(k, q) for k, q in params.items() if k.startswith("student/")]
    trainable = [q for _, q in named]
    for q in trainable:
        q.requires_grad_(True)
    if args.method == "matpac":  # configs/matpac_as2m.py: fairseq Adam, decay on everything
        optimizer = FairseqAdam(trainable, (0.9, 0.95), 1e-6, 0.05)
    elif args.method == "m2d":  # configs/m2d_as2m.py: timm no-decay group
        optimizer = torch.optim.AdamW(adamw_groups(named, 0.05), lr=3e-4, betas=(0.9, 0.95),
                                      eps=1e-8)
    else:  # configs/beats_iter1_as2m.py: no clipping
        optimizer = torch.optim.AdamW(adamw_groups(named, 0.01), lr=5e-4, betas=(0.9, 0.98),
                                      eps=1e-6)

    def step():
        with phases("forward"):
            out = fwd()
        for q in trainable:
            q.grad = None
        with phases("backward"):
            out["loss"].backward()
        with phases("update"):
            clip_grad_norm(trainable, 3.0 if args.method != "beats_mam" else 0.0)
            if args.method == "matpac":
                with torch.no_grad():
                    params["center"].copy_(out["new_center"])
                ema(params, "teacher/head", "student/head", 0.998)
                ema(params, "teacher/stack", "student/encoder/stack", 0.99995)
                optimizer.step(3e-4)
            else:
                optimizer.step()
                if args.method == "m2d":
                    ema(params, "teacher/stack", "student/encoder/stack", 0.99995)
        return out

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "method": args.method, "batch": args.batch,
            "params_M": round(sum(q.numel() for q in trainable) / 1e6, 1)}
    return step, info


TORCH_KINDS = {  # aten op -> kind, as benchmarks/profile_step.py names them
    "aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "aten::copy_": "layout", "aten::clone": "layout", "aten::contiguous": "layout",
    "aten::fill_": "broadcast", "aten::zero_": "broadcast", "aten::expand": "broadcast",
}


def profile(args) -> None:
    """Self time of every aten op of one step, per phase (forward, backward,
    update) and kind (benchmarks/profile_step.py's table for our step)."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, info = bench_step(args, phases=record_function)
    for _ in range(2):
        _timed(step)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = [_timed(step)[0] for _ in range(args.steps)]
    events = prof.events()
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events
              if e.name in ("forward", "backward", "update")]
    table: dict = {}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        phase = next((n for n, a, b in ranges if a <= e.time_range.start < b), "other")
        key = (phase, TORCH_KINDS.get(e.name, "elementwise"))
        table[key] = table.get(key, 0.0) + e.self_cpu_time_total / 1e3 / args.steps
    kinds = ("matmul", "attention", "layout", "broadcast", "elementwise")
    print(f"{args.method}: profiled step {min(wall):.3f} s (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); op self time per step (ms):")
    print("| phase | " + " | ".join(kinds) + " | total |")
    print("|---" * (len(kinds) + 2) + "|")
    for p in ("forward", "backward", "update"):
        row = [table.get((p, k), 0.0) for k in kinds]
        print(f"| {p} | " + " | ".join(f"{v:.0f}" for v in row) + f" | {sum(row):.0f} |")
    col = [sum(v for (p, k), v in table.items() if k == kind) for kind in kinds]
    print("| all | " + " | ".join(f"{v:.0f}" for v in col) + f" | {sum(col):.0f} |")


def _timed(step) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = step()
    return time.perf_counter() - t0, out


def embed_step(args):
    """(step, info): `step()` is the official inference path's clip embeddings
    (no grad) of the first `--batch` clips in `--waves`."""
    waves = torch.from_numpy(np.load(args.waves)[: args.batch])
    ckpt = torch.load(args.checkpoint, map_location="cpu")
    scene = (m2d_scene_embeddings if args.method == "m2d" else beats_scene_embeddings)(ckpt)

    @torch.inference_mode()
    def step():
        return scene(waves)

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "method": args.method,
            "batch": args.batch, "seconds": waves.shape[1] / 16000}
    return step, info


def bench(step, info, steps: int) -> dict:
    """Median step time after two warm-up steps."""
    times = [_timed(step)[0] for _ in range(steps + 2)][2:]
    s = statistics.median(times)
    return {**info, "step_s": round(s, 4), "samples_per_s": round(info["batch"] / s, 3)}


def serve(step, info, summary) -> None:
    """For benchmarks/compare_torch.py: warm up, print a JSON `ready` line (with
    `summary(output)`), then for each line N on stdin run N timed steps and print
    their times. The process waits (idle) between requests so another framework
    can run."""
    for _ in range(2):
        _, out = _timed(step)
    print(json.dumps({"ready": True, **info, **summary(out)}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        times = [_timed(step)[0] for _ in range(int(line))]
        print(json.dumps({"times": times}), flush=True)


def _random_vit_params(rng, dim, depth, pred_dim, pred_depth, head) -> Params:
    """Xavier-uniform ViT weights in our layout (values do not matter for timing)."""
    p = Params()

    def lin(name, din, dout):
        a = math.sqrt(6 / (din + dout))
        p[f"{name}/kernel"] = torch.tensor(rng.uniform(-a, a, (din, dout)), dtype=torch.float32)
        p[f"{name}/bias"] = torch.zeros(dout)

    def ln(name, d):
        p[f"{name}/scale"], p[f"{name}/bias"] = torch.ones(d), torch.zeros(d)

    def stack(prefix, d, n):
        for i in range(n):
            b = f"{prefix}/blocks/{i}"
            ln(f"{b}/norm1", d), ln(f"{b}/norm2", d)
            lin(f"{b}/attn/qkv", d, 3 * d), lin(f"{b}/attn/proj", d, d)
            lin(f"{b}/mlp/fc1", d, 4 * d), lin(f"{b}/mlp/fc2", 4 * d, d)
        ln(f"{prefix}/norm", d)

    lin("student/encoder/patch_embed", 256, dim)
    p["student/encoder/cls_token"] = torch.randn(1, 1, dim) * 0.02
    stack("student/encoder/stack", dim, depth)
    stack("teacher/stack", dim, depth)
    lin("student/predictor/embed", dim, pred_dim)
    p["student/predictor/mask_token"] = torch.randn(1, 1, pred_dim) * 0.02
    stack("student/predictor/stack", pred_dim, pred_depth)
    lin("student/predictor/pred", pred_dim, dim)
    if head:
        for who in ("student", "teacher"):
            lin(f"{who}/head/fc1", dim, 2048), lin(f"{who}/head/fc2", 2048, 2048)
            lin(f"{who}/head/fc3", 2048, 256)
            p[f"{who}/head/last_v"] = torch.tensor(rng.uniform(-1 / 16, 1 / 16, (256, 2048)),
                                                   dtype=torch.float32)
            p[f"{who}/head/last_g"] = torch.ones(2048)
        p["center"] = torch.zeros(1, 1, 2048)
    return p


def _random_beats_params(rng, dim, layers, pred_layers, codes, embed=512, ffn=3072,
                         heads=12, kernel=128, groups=16, buckets=320) -> Params:
    """BEATs iter1 student + random-projection tokenizer in our layout (values only
    need to be finite)."""
    p = Params()

    def t(shape, scale):
        return torch.tensor(rng.uniform(-scale, scale, shape), dtype=torch.float32)

    def lin(name, din, dout, bias=True):
        p[f"{name}/kernel"] = t((din, dout), math.sqrt(6 / (din + dout)))
        if bias:
            p[f"{name}/bias"] = torch.zeros(dout)

    def ln(name, d):
        p[f"{name}/scale"], p[f"{name}/bias"] = torch.ones(d), torch.zeros(d)

    def encoder(prefix, n):
        p[f"{prefix}/pos_conv/weight_v"] = t((kernel, dim // groups, dim), 0.02)
        p[f"{prefix}/pos_conv/weight_g"] = torch.ones(kernel)
        p[f"{prefix}/pos_conv/bias"] = torch.zeros(dim)
        ln(f"{prefix}/layer_norm", dim)
        for i in range(n):
            b = f"{prefix}/layers/{i}"
            for name in ("q", "k", "v", "out"):
                lin(f"{b}/self_attn/{name}_proj", dim, dim)
            lin(f"{b}/self_attn/grep_linear", dim // heads, 8)
            p[f"{b}/self_attn/grep_a"] = torch.ones(heads)
            if i == 0:
                p[f"{b}/self_attn/relative_attention_bias"] = t((buckets, heads), 0.02)
            ln(f"{b}/self_attn_layer_norm", dim)
            lin(f"{b}/fc1", dim, ffn), lin(f"{b}/fc2", ffn, dim)
            ln(f"{b}/final_layer_norm", dim)

    p["tokenizer/projection"] = t((256, 256), math.sqrt(3 / 256))
    p["tokenizer/codebook"] = F.normalize(torch.randn(codes, 256), dim=-1)
    lin("student/encoder/patch_embedding", 256, embed, bias=False)
    ln("student/encoder/layer_norm", embed)
    lin("student/encoder/post_extract_proj", embed, dim)
    encoder("student/encoder/encoder", layers)
    p["student/predictor/mask_emb"] = t((dim,), 0.02)
    encoder("student/predictor/encoder", pred_layers)
    lin("student/predictor/head", dim, codes)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trajectory", help="run the official update on trajectory inputs")
    t.add_argument("inputs")
    t.add_argument("out")
    b = sub.add_parser("bench", help="time one ViT-B (BEATs: beats_mam) step")
    b.add_argument("--method", choices=("matpac", "m2d", "beats_mam"), default="matpac")
    b.add_argument("--serve", action="store_true",
                   help="time steps on request from stdin (benchmarks/compare_torch.py)")
    b.add_argument("--profile", action="store_true",
                   help="op time per phase and kind (benchmarks/profile_step.py's table)")
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    b.add_argument("--steps", type=int, default=5)
    b.add_argument("--dim", type=int, default=768, help="encoder width (predictor stays 512)")
    b.add_argument("--heads", type=int, default=12)
    e = sub.add_parser("embed", help="time the official inference path's clip embeddings")
    e.add_argument("--method", choices=("m2d", "beats"), default="m2d")
    e.add_argument("--checkpoint", required=True, help="official M2D .pth / BEATs .pt")
    e.add_argument("--waves", required=True, help=".npy (N, samples) float32 16 kHz clips")
    e.add_argument("--serve", action="store_true",
                   help="time calls on request from stdin (benchmarks/compare_torch.py)")
    e.add_argument("--batch", type=int, default=1, help="clips per call")
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.add_argument("--steps", type=int, default=5)
    c = sub.add_parser("checkpoints", help="random ViT-B weights in the official M2D and BEATs "
                       "layouts (make_checkpoints); prints {method: path}")
    c.add_argument("out_dir")
    c.add_argument("--dim", type=int, default=768)
    c.add_argument("--layers", type=int, default=12)
    c.add_argument("--embed", type=int, default=512, help="BEATs patch embedding width")
    args = ap.parse_args()
    if args.command == "trajectory":  # bit-reproducible fixtures; bench times the default kernels
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        inputs = dict(np.load(args.inputs))
        out = trajectory(inputs)
        np.savez_compressed(args.out, **inputs, **out)
        print(f"wrote {args.out}")
    elif args.command == "checkpoints":
        print(json.dumps(make_checkpoints(args.out_dir, args.dim, args.layers, args.embed)))
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.command == "bench" and args.profile:
            profile(args)
            return
        step, info = (bench_step if args.command == "bench" else embed_step)(args)
        if not args.serve:
            print(json.dumps(bench(step, info, args.steps), indent=1))
        elif args.command == "bench":
            serve(step, info, lambda out: {"loss": float(out["loss"].detach())})
        else:
            serve(step, info, lambda out: {"embeddings": out.tolist()})

if __name__ == "__main__":
    main()
