"""Planted mistakes: the errors learners really make, one per submission.

Each is a text substitution in one solution cell of a notebook filled with the
model answers. Graded, the submission must lose the points of the test cells
in ``loses`` (its exercise) and keep every other point; where ``says`` is
given, the failing cell's error message must contain it, which shows that the
visible tests explain the failure in the learner's terms.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    name: str
    cell: str
    old: str
    new: str
    loses: tuple[str, ...]
    says: str = ""
    also: tuple[str, str] | None = None  # a second (old, new) edit in the same cell


MISTAKES = {
    "01_mha": [
        Mistake("no_scale", "attention", " / math.sqrt(q.shape[-1])", "", ("test_attention",),
                says="the 1/sqrt(d) scale is missing"),
        Mistake("softmax_wrong_axis", "attention", "torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)",
                ("test_attention",), says="the softmax runs over the query axis"),
        Mistake("mask_hides_self", "attention", "tril(diagonal=Tk - Tq)", "tril(diagonal=Tk - Tq - 1)",
                ("test_attention",), says="hides each token from itself"),
        Mistake("mask_top_left", "attention", "tril(diagonal=Tk - Tq)", "tril(diagonal=0)",
                ("test_attention",), says="aligned top-left"),
        Mistake("attention_calls_reference", "attention", "Tq, Tk = q.shape[-2], k.shape[-2]",
                "return reference.attention(q, k, v, causal)", ("test_attention",), says="switched off"),
        Mistake("attention_calls_torch", "attention", "Tq, Tk = q.shape[-2], k.shape[-2]",
                "return F.scaled_dot_product_attention(q, k, v, is_causal=causal)", ("test_attention",),
                says="switched off"),
        Mistake("split_without_transpose", "heads", "x.view(B, T, n_heads, C // n_heads).transpose(1, 2)",
                "x.view(B, n_heads, T, C // n_heads)", ("test_heads",), says="tokens end up mixed into heads"),
        Mistake("merge_wrong_order", "heads", "x.transpose(1, 2).reshape(B, T, H * D)", "x.reshape(B, T, H * D)",
                ("test_heads",), says="without first moving T in front of H"),
        Mistake("mha_forgets_W_o", "mha", "return self.W_o(merge_heads(attention(q, k, v, causal=causal)))",
                "return merge_heads(attention(q, k, v, causal=causal))", ("test_mha",), says="W_o is not applied"),
        Mistake("mha_k_from_W_q", "mha", "k = split_heads(self.W_k(x)", "k = split_heads(self.W_q(x)",
                ("test_mha",)),
        Mistake("backward_transposed_dk", "backward", "dk = dS.transpose(-2, -1) @ q * scale", "dk = dS @ q * scale",
                ("test_backward", "test_autograd_function")),
        Mistake("backward_no_rowsum", "backward", "dS = P * (dP - (dP * P).sum(dim=-1, keepdim=True))", "dS = P * dP",
                ("test_backward", "test_autograd_function"), says="dq (causal=False) is wrong"),
        Mistake("backward_no_scale_dq", "backward", "dq = dS @ k * scale", "dq = dS @ k",
                ("test_backward", "test_autograd_function")),
        Mistake("cache_wrong_axis", "kv_cache", "torch.cat([self.k, k_new], dim=2)", "torch.cat([self.k, k_new], dim=1)",
                ("test_kv_cache",)),
        Mistake("cache_not_kept", "kv_cache", "self.k = torch.cat([self.k, k_new], dim=2)", "self.k = k_new",
                ("test_kv_cache",)),
        Mistake("cache_size_forgets_v", "cache_size", "return 2 * n_heads * d_head * n_layers",
                "return n_heads * d_head * n_layers", ("test_cache_size",), says="both K and V"),
        Mistake("cache_size_fp32", "cache_size", "* batch * bytes_per_element", "* batch * 4", ("test_cache_size",)),
        Mistake("cache_size_hard_coded", "cache_size", "return 2 * n_heads * d_head * n_layers",
                "return 262_144", ("test_cache_size",)),
    ],
    "02_gqa": [
        Mistake("repeat_tiles_heads", "expand", "x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)",
                "x.repeat(1, n_rep, 1, 1)", ("test_expand",), says="You tiled the heads (repeat)"),
        Mistake("repeat_on_time_axis", "expand", "x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)",
                "x.repeat_interleave(n_rep, dim=2)", ("test_expand",), says="The head axis is dim=1"),
        Mistake("expanded_not_causal", "expand", "repeat_kv(v, n_rep), causal=causal)", "repeat_kv(v, n_rep))",
                ("test_expand",)),
        Mistake("grouped_materialises", "grouped", "qg = q.reshape(B, G, n_rep * Tq, D)  # (B, G, n_rep * Tq, D)",
                "qg = q.reshape(B, G, n_rep * Tq, D); k = k.repeat_interleave(n_rep, 1)[:, ::n_rep].contiguous()",
                ("test_grouped",), says="as large as the keys repeated"),
        Mistake("grouped_strided_heads", "grouped", "qg = q.reshape(B, G, n_rep * Tq, D)",
                "qg = q.reshape(B, n_rep, G, Tq, D).transpose(1, 2).reshape(B, G, n_rep * Tq, D)",
                ("test_grouped",)),
        Mistake("grouped_strided_heads_both_ways", "grouped",
                "qg = q.reshape(B, G, n_rep * Tq, D)  # (B, G, n_rep * Tq, D)",
                "qg = q.reshape(B, n_rep, G, Tq, D).transpose(1, 2).reshape(B, G, n_rep * Tq, D)",
                ("test_grouped",), says="grouped with a stride",
                also=("return out.reshape(B, H, Tq, v.shape[-1])",
                      "return out.view(B, G, n_rep, Tq, -1).transpose(1, 2).reshape(B, H, Tq, v.shape[-1])")),
        Mistake("grouped_mask_not_stacked", "grouped", "~allowed.repeat(n_rep, 1)",
                "~torch.ones(n_rep * Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - n_rep * Tq)",
                ("test_grouped",)),
        Mistake("module_kv_split_in_query_heads", "module", "k = split_heads(self.W_k(x), self.n_kv_heads)",
                "k = split_heads(self.W_k(x).repeat(1, 1, self.n_heads // self.n_kv_heads), self.n_heads)",
                ("test_module",)),
        Mistake("module_ignores_cache", "module", "k, v = cache.update(k, v)", "cache.update(k, v)", ("test_module",)),
        Mistake("backward_mean_not_sum", "backward", ".sum(dim=2)  # (B, G, T, D)", ".mean(dim=2)  # (B, G, T, D)",
                ("test_backward",), says="sum over the query heads of its group"),
        Mistake("backward_strided_groups", "backward",
                "d_heads.view(B, n_kv_heads, H // n_kv_heads, T, D).sum(dim=2)",
                "d_heads.view(B, H // n_kv_heads, n_kv_heads, T, D).sum(dim=1)", ("test_backward",)),
        Mistake("pool_first_head", "mean_pool", "W.view(n_kv_heads, n_heads // n_kv_heads, D, C).mean(dim=1)",
                "W.view(n_kv_heads, n_heads // n_kv_heads, D, C)[:, 0]", ("test_mean_pool",),
                says="keeps its first head"),
        Mistake("pool_strided_groups", "mean_pool", "W.view(n_kv_heads, n_heads // n_kv_heads, D, C).mean(dim=1)",
                "W.view(n_heads // n_kv_heads, n_kv_heads, D, C).mean(dim=0)", ("test_mean_pool",),
                says="every n_kv_heads-th head"),
        Mistake("error_not_relative", "mean_pool", "return ((y_gqa - y_mha).norm() / y_mha.norm()).item()",
                "return (y_gqa - y_mha).norm().item()", ("test_mean_pool",)),
        Mistake("cache_counts_k_only", "cache_size", "return 2 * n_kv_heads * d_head * n_layers",
                "return n_kv_heads * d_head * n_layers", ("test_cache_size",), says="count K but not V"),
        Mistake("fraction_inverted", "cache_size", "return n_kv_heads / n_heads", "return n_heads / n_kv_heads",
                ("test_cache_size",)),
    ],
}
