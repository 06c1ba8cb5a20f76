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
    # Hidden-only: each passes the visible test, whose sizes, positions and arguments it silently relies on.
    Mistake("rms_norm_ignores_eps", "rms_norm", "+ eps) * weight", "+ 1e-6) * weight", ("test_rms_norm",),
            says="with eps=0.1", hidden_only=True),
    Mistake("rms_norm_axis_of_a_matrix", "rms_norm", "x.square().mean(dim=-1, keepdim=True)",
            "x.square().mean(dim=1, keepdim=True)", ("test_rms_norm",), says="rms_norm of a (3, 5, 16) float64 input",
            hidden_only=True),
    Mistake("values_as_wide_as_keys", "compress_kv", "return split_heads(m.W_uk(c_kv), H), split_heads(m.W_uv(c_kv), H)",
            "B, T, _ = c_kv.shape\n    D = m.cfg.d_nope  # the head width\n"
            "    return (m.W_uk(c_kv).view(B, T, H, D).transpose(1, 2), m.W_uv(c_kv).view(B, T, H, D).transpose(1, 2))",
            ("test_compress_kv",), says="up_project_kv for a layer with 3 heads, keys 4 wide, values 5 wide",
            hidden_only=True),
    Mistake("up_projection_heads_of_the_notebook", "compress_kv", "H = m.cfg.n_heads", "H = cfg.n_heads",
            ("test_compress_kv",), says="n_heads=4", hidden_only=True),
    Mistake("query_heads_of_the_notebook", "compress_q", "split_heads(m.W_uq(c_q), m.cfg.n_heads)",
            "split_heads(m.W_uq(c_q), cfg.n_heads)", ("test_compress_q",), says="take every size from m.cfg",
            hidden_only=True),
    Mistake("rope_tables_rebuilt_from_zero", "decoupled_rope",
            "q_r = rope_interleaved(split_heads(m.W_qr(c_q), m.cfg.n_heads), cos, sin)",
            "cos, sin = rope_tables(torch.arange(h.shape[1], device=h.device), m.cfg.d_rope)  # positions 0 .. T-1\n"
            "    q_r = rope_interleaved(split_heads(m.W_qr(c_q), m.cfg.n_heads), cos, sin)",
            ("test_decoupled_rope",), says="at positions 9 to 13", hidden_only=True),
    Mistake("naive_forward_sizes_of_the_notebook", "mla_forward", "    cfg = m.cfg\n", "", ("test_mla_forward",),
            says="mla_forward for a layer with 3 heads", hidden_only=True),
    Mistake("absorbed_angles_in_float32", "absorbed",
            "cos, sin = rope_tables(torch.arange(start, start + T, device=h.device), cfg.d_rope)",
            "positions = torch.arange(start, start + T, device=h.device, dtype=torch.float32)\n"
            "    inv_freq = 1.0 / 10000 ** (torch.arange(0, cfg.d_rope, 2, device=h.device) / cfg.d_rope)\n"
            "    angles = positions[:, None] * inv_freq  # (T, d_rope / 2), in float32\n"
            "    cos, sin = angles.cos(), angles.sin()",
            ("test_absorbed",), says="at positions 100,000 and 100,001", hidden_only=True),
    Mistake("absorbed_counts_positions_itself", "absorbed", "start = len(cache)",
            "start = _tokens_seen[0]  # positions handed out so far\n    _tokens_seen[0] += T",
            ("test_absorbed",), says="two sequences decoded in turn", hidden_only=True,
            also=("def mla_absorbed_step(m, h, cache):", "_tokens_seen = [0]\n\n\ndef mla_absorbed_step(m, h, cache):")),
    Mistake("backward_tables_rebuilt_from_zero", "backward",
            "d_pre_rope = rope_interleaved(dk_r.sum(dim=1), cos, -sin)",
            "cos, sin = rope_tables(torch.arange(h.shape[1], device=h.device), m.cfg.d_rope)  # positions 0 .. T-1\n"
            "    d_pre_rope = rope_interleaved(dk_r.sum(dim=1), cos, -sin)",
            ("test_backward",), says="at positions 37 to 41", hidden_only=True),
    Mistake("backward_latent_width_of_the_notebook", "backward", "(g * raw).mean(dim=-1, keepdim=True)",
            "(g * raw).sum(dim=-1, keepdim=True) / cfg.d_latent", ("test_backward",),
            says="a latent of 6", hidden_only=True),
    Mistake("cache_ignores_batch", "cache_size", "* seq_len * batch *", "* seq_len *", ("test_cache_size",),
            says="with a batch of 3, your cache is 3x too small", hidden_only=True),
    Mistake("cache_two_bytes_always", "cache_size", "* bytes_per_element / 2**30", "* 2 / 2**30", ("test_cache_size",),
            says="use bytes_per_element", hidden_only=True),
]
