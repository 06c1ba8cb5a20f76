"""The benchmark's layers: one mechanism's cache at a context, its decode step and what that step must move.

One attention layer at a time (:class:`Layer`), with no projections of the new
token: a decode step is the attention over the cache, which is what the
mechanisms change. See :mod:`attnlab.lesson.bench` for the run.

The sixth mechanism, "MLA fused (Triton)", is MLA absorbed with its scores,
softmax and weighted sum in one Triton kernel (workbook 07's
:func:`attnlab.answers.kernels.paged_mla_decode`) over the same cache, read as
pages of 64 tokens. Triton is imported only when such a layer is built.
"""
from __future__ import annotations

import math

import torch

from attnlab.guard import guarded
from attnlab.lesson.pages import check_decode_args

FUSED = "MLA fused (Triton)"
MECHANISMS = ["MHA", "GQA", "MQA", "MLA naive", "MLA absorbed", FUSED]
PAGE = 64  # tokens per page of the fused kernel's cache (FlashMLA's page size)
INTERPRETED = "Triton's interpreter on the CPU: correct but not timed; the kernel is timed on a GPU"
NO_TRITON = "Triton is not installed here: the fused kernel is not run"


def load_kernels():
    """:mod:`attnlab.answers.kernels`, imported after Triton is set up (its interpreter
    where torch sees no GPU); None where Triton is not installed."""
    from attnlab.lesson import triton_env

    if not triton_env.available():
        return None
    triton_env.load()
    from attnlab.answers import kernels

    return kernels


def fused_skip_reason(cfg) -> str | None:
    """Why this run leaves the fused kernel untimed, or None when it times it."""
    from attnlab.lesson import triton_env

    if cfg.device == "cpu" and not cfg.time_interpreter:
        # Decided without importing Triton: the CPU run stays as quick as it was.
        return INTERPRETED if triton_env.available() else NO_TRITON
    if load_kernels() is None:
        return NO_TRITON
    if cfg.device == "cpu" and not triton_env.interpreted():
        return "Triton compiles for this process's GPU, not through its interpreter: no fused kernel on the CPU"
    return None


class Layer:
    """One mechanism's cache at context T, and its decode (and prefill) step."""

    def __init__(self, mechanism: str, cfg, T: int, gen: torch.Generator):
        self.m, self.cfg, self.T = mechanism, cfg, T
        dev, dt = cfg.device, cfg.torch_dtype
        B, H = cfg.batch, cfg.n_heads
        dk = cfg.d_nope + cfg.d_rope
        if gen.device.type != dev:
            raise ValueError(f"the generator is on {gen.device.type}, the benchmark on {dev}: "
                             f"make it with torch.Generator(device={dev!r})")
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {mechanism!r}: one of {MECHANISMS}")
        if mechanism == FUSED and T % PAGE:
            raise ValueError(f"{FUSED} reads its cache in pages of {PAGE} tokens: the context must be "
                             f"a multiple of {PAGE}, got {T}")

        def rand(*shape):
            # Drawn on the device, in its dtype: a CPU generator would spend minutes on
            # the 32K-token caches of a GPU run, and a float32 draw would double the memory.
            return torch.randn(*shape, generator=gen, device=dev, dtype=dt)

        before = _allocator_bytes() if dev == "cuda" else None
        if mechanism in ("MHA", "GQA", "MQA"):
            G = {"MHA": H, "GQA": cfg.gqa_kv_heads, "MQA": 1}[mechanism]
            self.G = G
            self.cache = [rand(B, G, T, dk), rand(B, G, T, cfg.d_v)]  # K, V
        else:
            # c_KV and k_R side by side in one (B, T, d_c + d_rope) tensor, as
            # DeepSeek's kernels keep them: one row of 576 numbers per token.
            self.cache = [rand(B, T, cfg.d_latent + cfg.d_rope)]
        # What the cache occupies: the CUDA allocator's count of the bytes its
        # tensors asked for (its blocks, rounded up to 512 B or 2 MiB, are
        # reported beside it), or the tensors' storage on a CPU.
        self.tensor_bytes = sum(t.untyped_storage().nbytes() for t in self.cache)
        if dev == "cuda":
            after = _allocator_bytes()
            self.cache_bytes, self.block_bytes = after[0] - before[0], after[1] - before[1]
        else:
            self.cache_bytes = self.block_bytes = self.tensor_bytes
        # The queries, with the 1/sqrt(d_nope + d_rope) score scale folded in as
        # a model folds it into W_Q: no extra pass over the scores at decode.
        self.q = rand(B, H, 1, dk) * (1.0 / math.sqrt(dk))
        if mechanism.startswith("MLA"):
            self.W_uk = rand(H, cfg.d_nope, cfg.d_latent) / math.sqrt(cfg.d_latent)
            self.W_uv = rand(H, cfg.d_v, cfg.d_latent) / math.sqrt(cfg.d_latent)
        if mechanism == FUSED:
            self._paged()

    def _paged(self):
        """The fused kernel's view of the same cache: 64-token pages, a block table, the lengths."""
        self.kernels = load_kernels()
        if self.kernels is None:
            raise RuntimeError(NO_TRITON)
        B, H, T = self.cfg.batch, self.cfg.n_heads, self.T
        kv = self.cache[0]
        # pool (B * T / 64, 64, d_c + d_rope) is a view, no copy; table (B, T / 64) int32. Made after the
        # allocator's count above: the cache's bytes are MLA's, the table is bookkeeping (4 bytes a page).
        self.pool, self.table = self.kernels.pages_of(kv, PAGE)
        self.lengths = torch.full((B,), T, dtype=torch.int32, device=kv.device)  # (B,): every sequence is full
        self.splits = self.kernels.default_splits(B, H, T, kv.device)  # passed on, so the row records what ran
        # Checked once, as a server checks its tables; each timed step then skips the checks and the
        # read-back of the lengths, which would wait for the GPU (longest=T, check=False).
        q = kv.new_empty(B, H, kv.shape[-1])  # (B, H, d_c + d_rope): a query's shape, dtype and device
        check_decode_args(q, self.pool, self.table, self.lengths, 1.0, self.cfg.d_latent, self.splits)

    def _latents(self):
        kv = self.cache[0]  # (B, T, d_c + d_rope)
        return kv, kv[..., :self.cfg.d_latent], kv[..., self.cfg.d_latent:]  # all, c_KV (B, T, d_c), k_R (B, T, d_rope)

    # The decode step: one new query per sequence against the whole cache.
    # Every product below is a plain batched matmul on the tensors as they lie
    # in memory (no hidden copies of the cache), and softmax reads the scores
    # in the cache's dtype (it accumulates in float32 inside).
    @guarded  # attention over a cache: not for graded code
    def decode(self):
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        if self.m in ("MHA", "GQA", "MQA"):
            K, V = self.cache
            q = self.q.view(B, self.G, H // self.G, -1)  # (B, G, heads per group, dk)
            p = torch.softmax(q @ K.transpose(-2, -1), dim=-1)  # (B, G, r, T)
            return p @ V  # (B, G, r, d_v)
        kv, c, k_r = self._latents()
        n, C = cfg.d_nope, cfg.d_latent
        q_c, q_r = self.q[:, :, 0, :n], self.q[:, :, 0, n:]  # (B, H, d_nope), (B, H, d_rope)
        if self.m == "MLA naive":  # re-expand every cached latent into per-head keys and values
            c_t = c.transpose(1, 2)  # (B, d_c, T)
            k_t = torch.bmm(self.W_uk.reshape(1, H * n, C).expand(B, -1, -1), c_t).view(B, H, n, T)  # keys, transposed
            v_t = torch.bmm(self.W_uv.reshape(1, H * cfg.d_v, C).expand(B, -1, -1), c_t).view(B, H, cfg.d_v, T)
            s = torch.baddbmm((q_c[:, :, None] @ k_t).view(B, H, T), q_r, k_r.transpose(1, 2))  # (B, H, T)
            p = torch.softmax(s, dim=-1)
            return (p[:, :, None] @ v_t.transpose(-2, -1)).view(B, H, cfg.d_v)
        q_lat = torch.einsum("bhn,hnc->bhc", q_c, self.W_uk)  # (B, H, d_c): W_UK absorbed into the query
        q_abs = torch.cat([q_lat, q_r], dim=-1)  # (B, H, d_c + d_rope): MQA with one 576-wide key per token
        if self.m == FUSED:  # scores, softmax and sum in one kernel; the scale is already in q
            o = self.kernels.paged_mla_decode(q_abs, self.pool, self.table, self.lengths, 1.0, d_c=C,
                                              num_splits=self.splits, longest=self.T, check=False)  # (B, H, d_c)
        else:
            p = torch.softmax(q_abs @ kv.transpose(1, 2), dim=-1)  # (B, H, T)
            o = p @ c  # (B, H, d_c)
        return torch.einsum("bhc,hvc->bhv", o, self.W_uv)  # (B, H, d_v): W_UV after the sum

    def decode_cost(self) -> tuple[int, int]:
        """(bytes that must move, FLOPs) of one decode step: the cache read once, plus weights."""
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        es = torch.empty((), dtype=cfg.torch_dtype).element_size()
        dk = cfg.d_nope + cfg.d_rope
        cache = self.tensor_bytes
        if self.m in ("MHA", "GQA", "MQA"):
            return cache, 2 * B * H * T * (dk + cfg.d_v)
        if self.m == "MLA naive":  # read the latents and weights, write and read back the expanded K and V
            expanded = B * H * T * (cfg.d_nope + cfg.d_v) * es
            weights = H * (cfg.d_nope + cfg.d_v) * cfg.d_latent * es
            flops = 2 * B * T * cfg.d_latent * H * (cfg.d_nope + cfg.d_v) + 2 * B * H * T * (dk + cfg.d_v)
            return cache + weights + 2 * expanded, flops
        # Absorbed, plain or fused: the same bytes and FLOPs, only the number of passes differs.
        weights = H * (cfg.d_nope + cfg.d_v) * cfg.d_latent * es
        return cache + weights, 2 * B * H * T * (cfg.d_latent + cfg.d_rope) + 2 * B * H * T * cfg.d_latent

    @guarded
    def prefill(self, heads_at_once: int = 8):
        """Causal attention with all T cached tokens as queries, naive or absorbed.

        Both forms run the same plain code (scores, masked softmax, weighted
        sum) and differ only in what they attend with: the naive form
        decompresses the latents once into 192-dim keys and 128-dim values per
        head; the absorbed form scores 576-dim latents and sums 512-dim ones.
        ``heads_at_once`` heads at a time: the (B, heads, T, T) scores of all
        128 heads at 4K tokens would take 34 GB in bf16.
        """
        cfg, B, H, T = self.cfg, self.cfg.batch, self.cfg.n_heads, self.T
        kv, c, k_r = self._latents()
        n = cfg.d_nope
        q = self.q.expand(B, H, T, -1)  # (B, H, T, dk): T queries (their values do not matter for timing)
        mask = torch.ones(T, T, dtype=torch.bool, device=kv.device).tril()  # (T, T): query t sees keys up to t
        out = []
        for h0 in range(0, H, heads_at_once):
            h = slice(h0, min(H, h0 + heads_at_once))
            q_h = q[:, h]  # (B, h, T, dk)
            if self.m == "MLA naive":  # decompress once, then attention with 192-dim keys
                k_c = torch.einsum("btc,hnc->bhtn", c, self.W_uk[h])  # (B, h, T, d_nope)
                v = torch.einsum("btc,hvc->bhtv", c, self.W_uv[h])  # (B, h, T, d_v)
                k = torch.cat([k_c, k_r[:, None].expand(-1, k_c.shape[1], -1, -1)], dim=-1)  # (B, h, T, dk)
                s = (q_h @ k.transpose(-2, -1)).masked_fill_(~mask, float("-inf"))  # (B, h, T, T)
                out.append(torch.softmax(s, dim=-1) @ v)  # (B, h, T, d_v)
            else:  # every query-key pair scored in the latent space
                q_lat = torch.einsum("bhtn,hnc->bhtc", q_h[..., :n], self.W_uk[h])  # (B, h, T, d_c)
                q_abs = torch.cat([q_lat, q_h[..., n:]], dim=-1)  # (B, h, T, d_c + d_rope)
                hh = q_abs.shape[1]
                s = (q_abs.reshape(B, hh * T, -1) @ kv.transpose(1, 2)).view(B, hh, T, T)  # heads folded into rows
                s.masked_fill_(~mask, float("-inf"))
                o = (torch.softmax(s, dim=-1).view(B, hh * T, T) @ c).view(B, hh, T, -1)  # (B, h, T, d_c)
                out.append(torch.einsum("bhtc,hvc->bhtv", o, self.W_uv[h]))  # (B, h, T, d_v)
        return torch.cat(out, dim=1)  # (B, H, T, d_v)


def _allocator_bytes() -> tuple[int, int]:
    """(bytes requested by live tensors, bytes in the allocator's blocks) on the current GPU."""
    stats = torch.cuda.memory_stats()
    blocks = stats["allocated_bytes.all.current"]
    return stats.get("requested_bytes.all.current", blocks), blocks
