"""Workbook 06: a tiny character-level language model to retrofit.

:class:`CharLM` and :func:`train`: a two-layer decoder trained on a small
public-domain text shipped in ``attnlab/data`` (nothing is downloaded), with
MHA, GQA or MLA attention at a matched parameter count.

Nothing here is a graded answer: the workbook's answers are in
:mod:`attnlab.answers`.
"""
from __future__ import annotations

import contextlib
import math
import pathlib
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnlab import answers
from attnlab.guard import guarded
from attnlab.lesson import cache

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "shakespeare.txt"


# ------------------------------------------------------------------ the corpus


def load_text(path: pathlib.Path = DATA) -> str:
    """The shipped public-domain text (see attnlab/data/README.md)."""
    return pathlib.Path(path).read_text(encoding="utf-8")


class Corpus:
    """Characters as integer ids, split into training (first 90 %) and validation (last 10 %) text."""

    def __init__(self, text: str, val_fraction: float = 0.1):
        if not text:
            raise ValueError("the text is empty")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        cut = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:cut], ids[cut:]

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def batch(self, split: str, batch: int, context: int, generator: torch.Generator):
        """(inputs, targets), each (batch, context): random windows of the split, targets shifted by one."""
        data = self.train if split == "train" else self.val
        if len(data) <= context + 1:
            raise ValueError(f"the {split} text ({len(data)} characters) is shorter than the context ({context})")
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        x = torch.stack([data[s:s + context] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + context + 1] for s in starts.tolist()])
        return x, y

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


# ------------------------------------------------------------------ the model


@dataclass(frozen=True)
class LMConfig:
    """A tiny decoder. ``kind`` is 'MHA', 'GQA' or 'MLA'; the MLP width is set to match MHA's parameter count."""

    kind: str
    vocab: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 16  # MHA/GQA head width; MLA's d_nope and d_v
    n_kv_heads: int = 2  # GQA only
    d_latent: int = 32  # MLA only: d_c
    d_rope: int = 8  # MLA only: the decoupled RoPE width
    d_ff_mha: int = 256  # the MLP width of the MHA model; the others get what matches its parameter count
    context: int = 64

    def attention_params(self) -> int:
        C, H, D = self.d_model, self.n_heads, self.d_head
        if self.kind == "MHA":
            return 4 * H * D * C
        if self.kind == "GQA":
            return 2 * H * D * C + 2 * self.n_kv_heads * D * C
        if self.kind == "MLA":
            return (H * (D + self.d_rope) * C + self.d_latent * C + self.d_latent + self.d_rope * C
                    + 2 * H * D * self.d_latent + H * D * C)
        raise ValueError(f"kind must be 'MHA', 'GQA' or 'MLA', got {self.kind!r}")

    @property
    def d_ff(self) -> int:
        """The MLP width that gives this model (nearly) the MHA model's parameter count."""
        mha = replace(self, kind="MHA").attention_params()
        return self.d_ff_mha + round((mha - self.attention_params()) / (2 * self.d_model))

    def cache_elements_per_token(self) -> int:
        """Elements cached per token over all layers (DeepSeek-V2, Table 1)."""
        return cache.mechanism_elements_per_token(self.kind, self.n_layers, self.n_heads, self.n_kv_heads,
                                                  self.d_head, self.d_latent, self.d_rope)


# The models' own RMSNorm and RoPE answer workbook 04's rms_norm and 06's partial_rope:
# guarded like the reference, so that graded code cannot borrow them.
@guarded
def _rms(x, weight=None, eps=1e-6):
    y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


@guarded
def _rope(x, cos, sin, keep=None):
    """Interleaved RoPE (x (..., T, d), cos/sin (T, d/2)); with ``keep`` (H, d/2) bool, only those pairs rotate."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    if keep is not None:
        out = torch.where(keep.repeat_interleave(2, dim=-1)[:, None, :], out, x)
    return out


class _GroupedAttention(torch.nn.Module):
    """MHA (n_kv_heads = n_heads) or GQA, with RoPE on every query and key feature."""

    def __init__(self, cfg: LMConfig, n_kv_heads: int):
        super().__init__()
        C, H, D = cfg.d_model, cfg.n_heads, cfg.d_head
        self.H, self.G, self.D = H, n_kv_heads, D
        self.W_q = torch.nn.Linear(C, H * D, bias=False)
        self.W_k = torch.nn.Linear(C, n_kv_heads * D, bias=False)
        self.W_v = torch.nn.Linear(C, n_kv_heads * D, bias=False)
        self.W_o = torch.nn.Linear(H * D, C, bias=False)
        self.keep = None  # (H, D/2) bool: partial RoPE, for the experiments after training

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.W_q(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        k = self.W_k(x).view(B, T, self.G, self.D).transpose(1, 2)  # (B, G, T, D)
        v = self.W_v(x).view(B, T, self.G, self.D).transpose(1, 2)  # (B, G, T, D)
        n_rep = self.H // self.G
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # (B, H, T, D)
        q, k = _rope(q, cos, sin, self.keep), _rope(k, cos, sin, self.keep)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.W_o(y.transpose(1, 2).reshape(B, T, self.H * self.D))


class _LatentAttention(torch.nn.Module):
    """MLA as in DeepSeek-V2 §2.1 without query compression (like DeepSeek-V2-Lite): latent + one shared RoPE key."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        C, H, D = cfg.d_model, cfg.n_heads, cfg.d_head
        self.H, self.D, self.R = H, D, cfg.d_rope
        self.W_q = torch.nn.Linear(C, H * (D + cfg.d_rope), bias=False)  # [q_C; q_R] per head
        self.W_dkv = torch.nn.Linear(C, cfg.d_latent, bias=False)
        self.kv_norm = torch.nn.Parameter(torch.ones(cfg.d_latent))
        self.W_kr = torch.nn.Linear(C, cfg.d_rope, bias=False)  # one RoPE key, shared by the heads
        self.W_uk = torch.nn.Linear(cfg.d_latent, H * D, bias=False)
        self.W_uv = torch.nn.Linear(cfg.d_latent, H * D, bias=False)
        self.W_o = torch.nn.Linear(H * D, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.W_q(x).view(B, T, self.H, self.D + self.R).transpose(1, 2)  # (B, H, T, D + R)
        q_c, q_r = q.split([self.D, self.R], dim=-1)
        c = _rms(self.W_dkv(x), self.kv_norm)  # (B, T, d_c): cached
        k_r = _rope(self.W_kr(x)[:, None], cos, sin)  # (B, 1, T, R): cached
        k_c = self.W_uk(c).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        v = self.W_uv(c).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        q = torch.cat([q_c, _rope(q_r, cos, sin)], dim=-1)
        k = torch.cat([k_c, k_r.expand(B, self.H, T, self.R)], dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(D + R)
        return self.W_o(y.transpose(1, 2).reshape(B, T, self.H * self.D))


class _Block(torch.nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = torch.nn.Parameter(torch.ones(cfg.d_model))
        self.norm2 = torch.nn.Parameter(torch.ones(cfg.d_model))
        if cfg.kind == "MLA":
            self.attn = _LatentAttention(cfg)
        else:
            self.attn = _GroupedAttention(cfg, cfg.n_heads if cfg.kind == "MHA" else cfg.n_kv_heads)
        self.up = torch.nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = torch.nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(_rms(x, self.norm1), cos, sin)
        return x + self.down(F.gelu(self.up(_rms(x, self.norm2))))


class CharLM(torch.nn.Module):
    """Embedding, ``n_layers`` pre-norm blocks (attention, GELU MLP), RMSNorm, output layer."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        cfg.attention_params()  # validates the kind
        self.cfg = cfg
        self.embed = torch.nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = torch.nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.norm = torch.nn.Parameter(torch.ones(cfg.d_model))
        self.out = torch.nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        rope_d = cfg.d_rope if cfg.kind == "MLA" else cfg.d_head
        cos, sin = answers.rope_tables(torch.arange(cfg.context), rope_d)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids):
        """ids (B, T) -> logits (B, T, vocab)."""
        T = ids.shape[1]
        if T > self.cfg.context:
            raise ValueError(f"at most {self.cfg.context} tokens, got {T}")
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        return self.out(_rms(x, self.norm))

    def loss(self, x, y):
        logits = self.forward(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch: int = 32
    lr: float = 3e-3
    eval_every: int = 50
    eval_batches: int = 8
    seed: int = 0
    # torch threads while training (None: leave torch's setting alone). One, because these matrices are
    # tiny: measured on 2 cores, a second thread gained nothing, and when other processes shared the cores
    # the two threads' spin-waiting made 60 steps take 20-33 s instead of 2.5-3 s.
    threads: int | None = 1


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run torch on ``n`` threads inside the block (None: as it is), then restore the setting."""
    saved = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@torch.no_grad()
def evaluate(model: CharLM, corpus: Corpus, batches: int = 8, batch: int = 32, seed: int = 1234,
             threads: int | None = 1) -> float:
    """Mean validation loss (nats per character) on fixed windows of the validation text."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch_threads(threads):
        losses = [model.loss(*corpus.batch("val", batch, model.cfg.context, g)).item() for _ in range(batches)]
    model.train(was_training)
    return sum(losses) / len(losses)


def train(cfg: LMConfig, corpus: Corpus, tc: TrainConfig, progress: bool = True) -> dict:
    """Train one model from a fixed seed on a fixed sequence of batches.

    Returns {"model", "config", "params", "train" [(step, loss)], "val" [(step, loss)], "seconds",
    "cpu_seconds"}: wall-clock time, and CPU time, which other processes on the same cores do not inflate.
    AdamW with a linear warm-up of 5 % of the steps and a cosine decay to 10 %,
    on ``tc.threads`` torch threads (restored afterwards).
    """
    with torch_threads(tc.threads):
        return _train(cfg, corpus, tc, progress)


def _train(cfg: LMConfig, corpus: Corpus, tc: TrainConfig, progress: bool) -> dict:
    torch.manual_seed(tc.seed)
    model = CharLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, tc.steps // 20)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, tc.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(tc.seed)  # the same batches for every model
    out = {"config": cfg, "params": count_params(model), "train": [], "val": []}
    # On stdout (stderr would zero a notebook cell under nbgrader), at most about once a second: each
    # update is an output message in a notebook.
    bar = tqdm(total=tc.steps, file=sys.stdout, disable=not progress, mininterval=1.0, desc=cfg.kind,
               bar_format="{desc}: {bar:20}| {n}/{total} {elapsed}{postfix}")
    start, cpu_start, running = time.perf_counter(), time.process_time(), None
    for step in range(tc.steps):
        x, y = corpus.batch("train", tc.batch, cfg.context, g)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        out["train"].append((step + 1, loss.item()))
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
            out["val"].append((step + 1, evaluate(model, corpus, tc.eval_batches, tc.batch)))
        bar.set_postfix_str(f"train loss {running:.3f}", refresh=False)
        bar.update()
    bar.close()
    out["seconds"] = time.perf_counter() - start
    out["cpu_seconds"] = time.process_time() - cpu_start  # all of this process's threads
    out["model"] = model
    return out
