"""Planted mistakes for workbook 04_mla: the errors learners really make.

Each is a text substitution in one solution cell of the notebook filled with
the model answers (see attnlab/mistakes.py). Graded, it must lose the points of
the test cells in ``loses`` and keep every other point. ``hidden_only`` marks a
mistake that the visible tests let through: it must pass them and lose its
points only through the hidden tests. This file is not released (nbgrader
ignores *.py in the source folder).
"""
from attnlab.mistakes import Mistake

MISTAKES = [
    Mistake("rms_norm_no_weight", "rms_norm", "+ eps) * weight", "+ eps)", ("test_rms_norm",),
            says="the weight is not applied"),
    Mistake("rms_norm_wrong_axis", "rms_norm", "x.square().mean(dim=-1, keepdim=True)",
            "x.square().mean(dim=0, keepdim=True)", ("test_rms_norm",), says="over the wrong axis"),
    Mistake("latent_not_normed", "compress_kv", "return rms_norm(m.W_dkv(h), m.kv_norm)", "return m.W_dkv(h)",
            ("test_compress_kv",), says="the latent's RMSNorm is missing"),
    Mistake("up_projection_heads_mixed", "compress_kv", "return split_heads(m.W_uk(c_kv), H), split_heads(m.W_uv(c_kv), H)",
            "B, T, _ = c_kv.shape\n    return m.W_uk(c_kv).view(B, H, T, -1), m.W_uv(c_kv).view(B, H, T, -1)",
            ("test_compress_kv",)),
    Mistake("query_latent_not_normed", "compress_q", "c_q = rms_norm(m.W_dq(h), m.q_norm)", "c_q = m.W_dq(h)",
            ("test_compress_q",), says="the query latent's RMSNorm is missing"),
    Mistake("k_r_per_head", "decoupled_rope", "k_r = rope_interleaved(m.W_kr(h)[:, None], cos, sin)  # (B, 1, T, d_rope)",
            "k_r = rope_interleaved(m.W_kr(h)[:, None], cos, sin).expand(-1, m.cfg.n_heads, -1, -1)",
            ("test_decoupled_rope",), says="not one per head"),
    Mistake("k_r_not_rotated", "decoupled_rope", "k_r = rope_interleaved(m.W_kr(h)[:, None], cos, sin)",
            "k_r = m.W_kr(h)[:, None]", ("test_decoupled_rope",), says="k_R is not rotated"),
    Mistake("rope_on_compressed_key", "mla_forward",
            "k_c, v_c = up_project_kv(m, compress_kv(m, h))  # (B, H, T, d_nope), (B, H, T, d_v)",
            "k_c, v_c = up_project_kv(m, compress_kv(m, h))\n"
            "    k_c = rope_interleaved(k_c, *rope_tables(torch.arange(T, device=h.device), cfg.d_nope))",
            ("test_mla_forward",)),
    Mistake("query_parts_swapped", "mla_forward", "q = torch.cat([q_c, q_r], dim=-1)", "q = torch.cat([q_r, q_c], dim=-1)",
            ("test_mla_forward",)),
    Mistake("naive_not_causal", "mla_forward", "attention(q, k, v_c, causal=True)", "attention(q, k, v_c)",
            ("test_mla_forward",)),
    Mistake("absorbed_scale_nope_only", "absorbed", "/ math.sqrt(cfg.d_nope + cfg.d_rope)", "/ math.sqrt(cfg.d_nope)",
            ("test_absorbed",)),
    Mistake("absorbed_rope_at_zero", "absorbed", "torch.arange(start, start + T, device=h.device)",
            "torch.arange(T, device=h.device)", ("test_absorbed",)),
    Mistake("inference_skips_query_compression", "absorbed", "c_q, q_c = compress_q(m, h)  # (B, T, d'_c), (B, H, T, d_nope)",
            "c_q = m.W_dq(h); q_c = split_heads(m.W_uq(c_q), H)", ("test_absorbed",)),
    Mistake("absorbed_mask_top_left", "absorbed", "tril(diagonal=Tk - T)", "tril(diagonal=0)", ("test_absorbed",)),
    Mistake("cache_caches_decompressed_keys", "absorbed",
            "c_kv, k_r = cache.update(compress_kv(m, h), k_r_new[:, 0])  # (B, Tk, d_c), (B, Tk, d_rope)",
            "c_kv, k_r = cache.update(compress_kv(m, h), k_r_new[:, 0])\n"
            "    cache.k_c, cache.v_c = up_project_kv(m, c_kv)  # 'to save time later'",
            ("test_absorbed",), says="never the decompressed keys or values"),
    Mistake("absorbed_decompresses_cache", "absorbed",
            "q_lat = torch.einsum(\"bhtn,hnc->bhtc\", q_c, W_uk)  # (B, H, T, d_c): the absorbed query",
            "k_all, v_all = up_project_kv(m, c_kv)\n"
            "    q_full = torch.cat([q_c, q_r], -1)\n"
            "    k_full = torch.cat([k_all, k_r[:, None].expand(B, H, -1, -1)], -1)\n"
            "    return m.W_o(merge_heads(attention(q_full, k_full, v_all, causal=True)))\n"
            "    q_lat = torch.einsum(\"bhtn,hnc->bhtc\", q_c, W_uk)",
            ("test_absorbed",), says="instead of decompressing the cache"),
    Mistake("cache_wrong_axis", "absorbed", "self.c_kv = torch.cat([self.c_kv, c_kv], dim=1)",
            "self.c_kv = torch.cat([self.c_kv, c_kv], dim=0)", ("test_absorbed",)),
    Mistake("k_r_grad_one_head", "backward", "dk_r.sum(dim=1)", "dk_r[:, 0]", ("test_backward",),
            says="sum the heads' gradients"),
    Mistake("rope_backward_not_inverted", "backward", "rope_interleaved(dk_r.sum(dim=1), cos, -sin)",
            "rope_interleaved(dk_r.sum(dim=1), cos, sin)", ("test_backward",)),
    Mistake("rms_norm_backward_first_term_only", "backward",
            "d_raw = rho * g - rho**3 * raw * (g * raw).mean(dim=-1, keepdim=True)", "d_raw = rho * g",
            ("test_backward",), says="Through the RMSNorm"),
    Mistake("cache_forgets_rope_key", "cache_size", "return (d_latent + d_rope) * n_layers",
            "return d_latent * n_layers", ("test_cache_size",), says="the RoPE key is missing"),
    Mistake("cache_gib_in_gb", "cache_size", "/ 2**30", "/ 10**9", ("test_cache_size",)),
]
