"""Planted mistakes for workbook 02_gqa: the errors learners really make.

Each is a text substitution in one solution cell of the notebook filled with
the model answers (see attnlab/mistakes.py). Graded, it must lose the points of
the test cells in ``loses`` and keep every other point. ``hidden_only`` marks a
mistake that the visible tests let through: it must pass them and lose its
points only through the hidden tests. This file is not released (nbgrader
ignores *.py in the source folder).
"""
from attnlab.mistakes import Mistake

MISTAKES = [
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
    # Hidden-only: each passes the visible test of its exercise and loses its points through the hidden tests.
    Mistake("repeat_kv_default_dtype", "expand",
            "return x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)  # (B, H, T, D)",
            "out = torch.empty(B, G * n_rep, T, D, device=x.device)  # float32, whatever x is\n"
            "    for h in range(G * n_rep):\n"
            "        out[:, h] = x[:, h // n_rep]\n"
            "    return out",
            ("test_expand",), says="float64 tensor with n_rep=2 has dtype torch.float32", hidden_only=True),
    Mistake("grouped_values_as_wide_as_keys", "grouped", "return out.reshape(B, H, Tq, v.shape[-1])",
            "return out.reshape(B, H, Tq, D)", ("test_grouped",), says="values 5 wide (keys 8)", hidden_only=True),
    Mistake("module_masks_only_the_prefill", "module",
            "        if cache is not None:\n            k, v = cache.update(k, v)",
            "        causal = cache is None or len(cache) == 0  # a decode step sees every cached token\n"
            "        if cache is not None:\n            k, v = cache.update(k, v)",
            ("test_module",), says="the step of 2 token(s) at positions 6..7",
            also=("gqa_attention(q, k, v, causal=True)", "gqa_attention(q, k, v, causal=causal)"), hidden_only=True),
    Mistake("backward_shapes_from_q", "backward",
            "return dq, sum_over_groups(dk_heads, G), sum_over_groups(dv_heads, G)",
            "B, H, T, D = q.shape  # Tq == Tk and Dv == D, as in every example so far\n"
            "    return dq, dk_heads.view(B, G, n_rep, T, D).sum(2), dv_heads.view(B, G, n_rep, T, D).sum(2)",
            ("test_backward",), says="3 queries against 5 keys, values 4 wide (keys 6)", hidden_only=True),
    Mistake("conversion_keeps_mha_output", "mean_pool",
            "    y_mha = reference.mha_forward(x, W_q, W_k, W_v, W_o, n_heads)\n",
            "    if \"y\" not in _mha_output:  # the MHA output does not depend on n_kv_heads: compute it once\n"
            "        _mha_output[\"y\"] = reference.mha_forward(x, W_q, W_k, W_v, W_o, n_heads)\n"
            "    y_mha = _mha_output[\"y\"]\n",
            ("test_mean_pool",), says="keep something from an earlier call",
            also=("def conversion_error(", "_mha_output = {}\n\n\ndef conversion_error("), hidden_only=True),
    Mistake("cache_hard_codes_head_dim", "cache_size", "return 2 * n_kv_heads * d_head * n_layers",
            "return 2 * n_kv_heads * 128 * n_layers", ("test_cache_size",), says="not Llama's 128",
            hidden_only=True),
]
