"""What the workbooks' test cells compare a learner's answer with.

The right answer computed another way (a gradient by autograd), the results
of common mistakes (the "suspects" that :func:`attnlab.checks.expect_close`
names when a learner's answer matches one), and test inputs (random weights
of known shapes, a fake GPU clock). They live here so that a test cell reads
as a check of the learner's function; a test cell imports what it uses, so a
learner's cell cannot replace one.
"""
from __future__ import annotations

import math

import torch

from attnlab import answers



def weights_of(m):
    """The four projection weights of an attention module, as a list."""
    return [m.W_q.weight, m.W_k.weight, m.W_v.weight, m.W_o.weight]


def kv_gradients_by_autograd(mm, hh, wrt, start=0):
    """Run the naive forward of the tokens hh at positions start, start + 1, ..., and let autograd differentiate a
    loss with respect to the per-head keys and values (wrt="heads": dk_C, dv_C, dk_R, then the RoPE tables: the
    inputs of mla_kv_backward) or to the KV path's weights (wrt="weights": dW_dkv, dW_uk, dW_uv, dW_kr).
    The weights' gradients are computed only after your function has returned, and never stored in mm."""
    B, T, _ = hh.shape
    c = mm.cfg
    cs, sn = answers.rope_tables(torch.arange(start, start + T, device=hh.device), c.d_rope)
    c_q, q_c = answers.compress_q(mm, hh)
    k_c, v_c = answers.up_project_kv(mm, answers.compress_kv(mm, hh))
    q_r, k_r = answers.decoupled_rope(mm, hh, c_q, cs, sn)
    k_r_heads = k_r.expand(B, c.n_heads, T, c.d_rope)
    y = answers.attention(torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r_heads], -1), v_c, causal=True)
    if wrt == "heads":
        return (*torch.autograd.grad(y.square().sum(), [k_c, v_c, k_r_heads]), cs, sn)
    return torch.autograd.grad(y.square().sum(), [mm.W_dkv.weight, mm.W_uk.weight, mm.W_uv.weight, mm.W_kr.weight])


class FakeGPU:
    """fn() queues `durations[i]` seconds of work and returns at once; sync() waits for it."""

    def __init__(self, durations):
        self.now, self.pending, self.calls, self.durations = 0.0, 0.0, 0, list(durations)

    def clock(self):
        return self.now

    def fn(self):
        self.pending += self.durations[min(self.calls, len(self.durations) - 1)]
        self.now += 1e-6  # launching takes a microsecond
        self.calls += 1

    def sync(self):
        self.now += self.pending
        self.pending = 0.0


def gqa_weights(C, H, G, D, seed):
    """Random float64 W_q, W_k, W_v, W_o of a GQA layer (width C, H query heads, G groups, head width D)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(H * D, C), (G * D, C), (G * D, C), (C, H * D)]
    return [torch.randn(s, generator=g, dtype=torch.float64) / math.sqrt(s[1]) for s in shapes]


def strided_selection(H, G, D):
    """What you get when query head h reads group h % G (the strided pairing) instead of h // (H // G)."""
    eye = torch.eye(G * D, dtype=torch.float64).view(G, D, G * D)
    select = eye.repeat(H // G, 1, 1).reshape(H * D, G * D)
    zeros = torch.zeros_like(select)
    return torch.cat([select, zeros], 1), torch.cat([zeros, select], 1)


def svd_suspects(W_k, W_v, r):
    """The products W_k_up @ W_down that common mistakes give, and the right one."""
    GD = W_k.shape[0]
    U, S, Vh = torch.linalg.svd(torch.cat([W_k, W_v]), full_matrices=False)
    best = (U[:, :r] * S[:r]) @ Vh[:r]
    Uk, Sk, Vhk = torch.linalg.svd(W_k, full_matrices=False)
    return best[:GD], best[GD:], {
        "the singular values are missing from the up-projection (U_r instead of U_r Sigma_r)": (U[:, :r] @ Vh[:r])[:GD],
        "the smallest singular values are kept instead of the largest": ((U[:, -r:] * S[-r:]) @ Vh[-r:])[:GD],
        "W_k is compressed on its own (the SVD must be of the stack [W_k; W_v])": (Uk[:, :r] * Sk[:r]) @ Vhk[:r],
    }


def partial_suspects(x, cos, sin, keep):
    """What common mistakes in partial RoPE give for these inputs."""
    rotated = answers.rope_interleaved(x, cos, sin)
    halves = torch.cat([keep, keep], dim=-1)
    halves = halves[:, None, :] if halves.ndim == 2 else halves
    pairs = keep.repeat_interleave(2, dim=-1)
    pairs = pairs[:, None, :] if pairs.ndim == 2 else pairs
    return {"pair i is taken as features (i, i + d/2), the rotate-half layout's pairs, not (2i, 2i+1)":
            torch.where(halves, rotated, x),
            "the kept pairs are left unrotated and the others rotated (the mask is inverted)":
            torch.where(pairs, x, rotated)}


def scaled_pairs(shape, scales, seed):
    """Random (B, H, T, d) values whose pair i of head h has typical size scales[h][i]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scales, dtype=torch.float64).repeat_interleave(2, dim=-1)[None, :, None, :]
    return torch.randn(shape, generator=g, dtype=torch.float64) * s


def top_pairs(score, n, largest=True):
    """A (H, d/2) mask of the n pairs per head with the largest (or smallest) score."""
    return torch.zeros(score.shape, dtype=torch.bool).scatter(1, score.topk(n, dim=-1, largest=largest).indices, True)
