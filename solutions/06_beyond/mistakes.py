"""Planted mistakes of workbook 06_beyond; attnlab/instructor/mistakes.py says what each must show."""
from attnlab.instructor.mistakes import Mistake

MISTAKES = [
    Mistake("strided_groups", "gqa_as_mla", "eye.repeat_interleave(n_rep, dim=0)", "eye.repeat(n_rep, 1, 1)",
            ("test_gqa_as_mla",), says="query head h reads group h % G"),
    Mistake("values_read_from_keys", "gqa_as_mla", "W_uv = torch.cat([zeros, select], dim=1)",
            "W_uv = torch.cat([select, zeros], dim=1)", ("test_gqa_as_mla",), says="the values are read from the keys"),
    Mistake("latent_per_query_head", "gqa_as_mla", "W_dkv = torch.cat([W_k, W_v], dim=0)",
            "W_dkv = torch.cat([W_k.repeat_interleave(n_rep, 0), W_v.repeat_interleave(n_rep, 0)], dim=0)",
            ("test_gqa_as_mla",), says="GQA's cache exactly"),
    # The visible layer has D = C / H (32 / 8 = 4), as in an MHA model: a head width taken from there passes it.
    Mistake("head_width_from_model_width", "gqa_as_mla", "D, n_rep = GD // n_kv_heads,", "D, n_rep = C // n_heads,",
            ("test_gqa_as_mla",), says="5 K/V heads of width 6", hidden_only=True),
    Mistake("svd_without_singular_values", "joint_svd", "up = U[:, :rank] * S[:rank]", "up = U[:, :rank]",
            ("test_joint_svd",), says="the singular values are missing"),
    Mistake("svd_keeps_smallest", "joint_svd", "up = U[:, :rank] * S[:rank]", "up = U[:, -rank:] * S[-rank:]",
            ("test_joint_svd",), says="the smallest singular values are kept",
            also=("return Vh[:rank], up[:n_k], up[n_k:]", "return Vh[-rank:], up[:n_k], up[n_k:]")),
    Mistake("svd_side_by_side", "joint_svd", "torch.cat([W_k, W_v], dim=0)", "torch.cat([W_k, W_v], dim=1)",
            ("test_joint_svd",), says="W_down at rank"),
    # The visible W_k and W_v have the same rows: splitting the stack in the middle passes it.
    Mistake("svd_split_in_half", "joint_svd", "return Vh[:rank], up[:n_k], up[n_k:]",
            "half = len(up) // 2  # keys on top, values below\n    return Vh[:rank], up[:half], up[half:]",
            ("test_joint_svd",), says="the stack splits where W_k ends", hidden_only=True),
    Mistake("partial_rope_half_pairs", "partial_rope", "keep.repeat_interleave(2, dim=-1)",
            "torch.cat([keep, keep], dim=-1)", ("test_partial_rope",), says="rotate-half layout's pairs"),
    Mistake("partial_rope_inverted", "partial_rope", "torch.where(mask, rotated, x)", "torch.where(mask, x, rotated)",
            ("test_partial_rope",), says="the mask is inverted"),
    Mistake("partial_rope_calls_reference", "partial_rope", "rotated = answers.rope_interleaved(x, cos, sin)",
            "return answers.partial_rope(x, cos, sin, keep)", ("test_partial_rope",), says="switched off"),
    # The visible tables are for positions 0 .. T-1: rebuilding them from there instead of using cos and sin passes it.
    Mistake("partial_rope_positions_from_zero", "partial_rope", "rotated = answers.rope_interleaved(x, cos, sin)",
            "cos, sin = answers.rope_tables(torch.arange(x.shape[-2]), x.shape[-1], dtype=x.dtype)\n"
            "    rotated = answers.rope_interleaved(x, cos, sin)", ("test_partial_rope",),
            says="rebuilt from positions 0", hidden_only=True),
    Mistake("norm_of_queries_only", "pairs_by_norm", "(q_norm * k_norm).topk", "q_norm.topk",
            ("test_pairs_by_norm",), says="only the queries' norms"),
    Mistake("keeps_smallest_scores", "pairs_by_norm", "topk(n_keep, dim=-1)", "topk(n_keep, dim=-1, largest=False)",
            ("test_pairs_by_norm",), says="smallest score"),
    # The visible q and k have a batch of 2 and 2 heads: a mask sized by the batch passes it.
    Mistake("mask_sized_by_batch", "pairs_by_norm", "keep = torch.zeros(H, d // 2,", "keep = torch.zeros(B, d // 2,",
            ("test_pairs_by_norm",), says="(a batch of 3, 4 heads)", hidden_only=True),
]
