"""Planted mistakes for workbook 03_rope: the errors learners really make.

Each is a text substitution in one solution cell of the notebook filled with
the model answers (see attnlab/mistakes.py). Graded, it must lose the points of
the test cells in ``loses`` and keep every other point. ``hidden_only`` marks a
mistake that the visible tests let through: it must pass them and lose its
points only through the hidden tests. This file is not released (nbgrader
ignores *.py in the source folder).
"""
from attnlab.mistakes import Mistake

MISTAKES = [
    Mistake("exponent_without_2", "tables", "(base ** (-2 * i / d)).float()", "(base ** (-i / d)).float()",
            ("test_tables",), says="the exponent is -i/d"),
    Mistake("positions_ignored", "tables", "angles = positions.double()[:, None]",
            "angles = torch.arange(len(positions), device=positions.device).double()[:, None]",
            ("test_tables",), says="the positions are ignored"),
    Mistake("tables_swapped", "tables", "return angles.cos().float(), angles.sin().float()",
            "return angles.sin().float(), angles.cos().float()", ("test_tables",)),
    Mistake("rotation_backwards", "layouts", "torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)",
            "torch.stack([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)", ("test_layouts",),
            says="the rotation goes the wrong way"),
    Mistake("half_uses_adjacent_pairs", "layouts", "x1, x2 = x[..., :h], x[..., h:]",
            "x1, x2 = x[..., 0::2], x[..., 1::2]", ("test_layouts",)),
    Mistake("interleaved_concatenates", "layouts", "return out.flatten(-2)  # (..., T, d)",
            "return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)", ("test_layouts",),
            says="that is the rotate-half layout"),
    Mistake("permutation_across_heads", "permutation", "W.view(n_heads, D // 2, 2, C).transpose(1, 2).reshape(HD, C)",
            "W.view(HD // 2, 2, C).transpose(0, 1).reshape(HD, C)", ("test_permutation",),
            says="across heads"),
    Mistake("permutation_inverse", "permutation", "W.view(n_heads, D // 2, 2, C).transpose(1, 2).reshape(HD, C)",
            "W.view(n_heads, 2, D // 2, C).transpose(1, 2).reshape(HD, C)", ("test_permutation",),
            says="inverse permutation"),
    Mistake("check_without_shift", "relative", "for s in (1, 9, 250):", "for s in (0,):", ("test_relative",),
            says="for some s != 0"),
    Mistake("check_exact_equality", "relative",
            "if not torch.isclose(score(m, n), score(m + s, n + s), atol=1e-6, rtol=1e-6):",
            "if score(m, n).item() != score(m + s, n + s).item():", ("test_relative",),
            says="with a tolerance, rather than with =="),
    Mistake("decode_at_position_zero", "rope_cache",
            "positions = torch.arange(len(cache), len(cache) + x.shape[1], device=x.device)",
            "positions = torch.arange(x.shape[1], device=x.device)", ("test_rope_cache",),
            says="as if they stood at position 0"),
    Mistake("cache_unrotated_keys", "rope_cache",
            "k, v = cache.update(rope_interleaved(k, cos, sin), v)",
            "k, v = cache.update(k, v); k = rope_interleaved(k, cos, sin)",
            ("test_rope_cache",)),
    Mistake("query_not_rotated", "rope_cache", "gqa_attention(rope_interleaved(q, cos, sin), k, v, causal=True)",
            "gqa_attention(q, k, v, causal=True)", ("test_rope_cache",)),
    Mistake("absorb_wrong_side", "absorb", "return W_q.T @ W_uk  # (C, d_c)", "return W_uk.T @ W_q",
            ("test_absorb",), says="which one is transposed"),
    Mistake("absorbed_scores_transposed", "absorb", "return h @ W_absorbed @ c.T  # (Tq, Tk)",
            "return (h @ W_absorbed @ c.T).T", ("test_absorb",)),
    # Hidden-only: each passes the visible test of its exercise and loses its points through the hidden tests.
    Mistake("angles_in_float32", "tables", "angles = positions.double()[:, None]",
            "angles = positions.float()[:, None]", ("test_tables",), says="your cos table is off by",
            also=("i = torch.arange(d // 2, dtype=torch.float64, device=positions.device)",
                  "i = torch.arange(d // 2, dtype=torch.float32, device=positions.device)"), hidden_only=True),
    Mistake("rope_in_float32", "layouts", "x1, x2 = x[..., 0::2], x[..., 1::2]",
            "x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]  # rotate in float32, as Meta's Llama code does",
            ("test_layouts",), says="float64 tensor at positions 7..11 has dtype torch.float32", hidden_only=True),
    Mistake("permutation_default_dtype", "permutation",
            "return W.view(n_heads, D // 2, 2, C).transpose(1, 2).reshape(HD, C)",
            "out = torch.empty(HD, C, device=W.device)  # (H * D, C), float32 whatever W is\n"
            "    for h in range(n_heads):\n"
            "        rows = W[h * D:(h + 1) * D]  # this head's rows\n"
            "        out[h * D:h * D + D // 2], out[h * D + D // 2:(h + 1) * D] = rows[0::2], rows[1::2]\n"
            "    return out",
            ("test_permutation",), says="float64 projection with 3 heads of 4 rows has dtype torch.float32",
            hidden_only=True),
    Mistake("check_small_shifts_only", "relative", "for s in (1, 9, 250):", "for s in (1, 2, 3):",
            ("test_relative",), says="shift by hundreds of positions too", hidden_only=True),
    Mistake("tables_default_base", "rope_cache", "cos, sin = rope_tables(positions, q.shape[-1], base)",
            "cos, sin = rope_tables(positions, q.shape[-1])", ("test_rope_cache",),
            says="built with the base you are given (500,000)", hidden_only=True),
    Mistake("absorbed_uses_notebook_weights", "absorb", "return h @ W_absorbed @ c.T  # (Tq, Tk)",
            "return h @ (W_q.T @ W_uk) @ c.T  # (Tq, Tk)", ("test_absorb",), says="not the notebook's W_q",
            hidden_only=True),
]
