"""Planted mistakes of workbook 07_flash_mla; attnlab/instructor/mistakes.py says what each must show."""
from attnlab.instructor.mistakes import Mistake

MISTAKES = [
    Mistake("online_acc_not_rescaled", "online_softmax",
            'acc_new = acc * alpha[..., None] + torch.einsum', 'acc_new = acc + torch.einsum',
            ("test_online_softmax",), says="shrink by alpha"),
    Mistake("online_sum_not_rescaled", "online_softmax", "l_new = l * alpha + p.sum(dim=-1)", "l_new = l + p.sum(dim=-1)",
            ("test_online_softmax",), says="shrink by alpha"),
    # Exact in real numbers: the running max only keeps exp() from overflowing, which moderate scores never do.
    Mistake("online_block_max_only", "online_softmax", "m_new = torch.maximum(m, scores.amax(dim=-1))",
            "m_new = scores.amax(dim=-1)  # this block's largest score", ("test_online_softmax",),
            says="far below m", hidden_only=True),
    # exp(-inf - -inf) is NaN, and the visible test has no row whose first block is all masked.
    Mistake("online_masked_row_nan", "online_softmax",
            "shift = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)", "shift = m_new",
            ("test_online_softmax",), says="NaN", hidden_only=True),
    Mistake("merge_unweighted_mean", "merge", "merged = (w[..., None] * out).sum(dim=0) / total[..., None]",
            "merged = out.mean(dim=0)", ("test_merge",), says="averaged without their weights"),
    Mistake("merge_lse_is_max", "merge", "return merged, top + torch.log(total)", "return merged, top",
            ("test_merge",), says="the largest part's log-sum-exp"),
    # exp(lse) unshifted is exact until it overflows: near 500 (float64 709, float32 88) it does.
    Mistake("merge_no_shift", "merge", "top = torch.where(top == -math.inf, torch.zeros_like(top), top)",
            "top = torch.zeros_like(top)  # exp(lse) directly", ("test_merge",), says="subtract the largest first",
            hidden_only=True),
    Mistake("scores_unscaled", "scores", "s = tl.dot(q, tl.trans(k)) * scale", "s = tl.dot(q, tl.trans(k))",
            ("test_scores",), says="the scale is not applied"),
    Mistake("scores_every_program_first_block", "scores",
            "cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)", "cols = tl.arange(0, BLOCK_N)",
            ("test_scores",), says="written by no program"),
    # The visible test's keys are a contiguous (N, D) tensor, whose row stride is D.
    Mistake("scores_stride_assumed", "scores", "k_ptr + cols[:, None] * stride_k", "k_ptr + cols[:, None] * D",
            ("test_scores",), says="the stride, not D", hidden_only=True),
    Mistake("decode_unscaled", "decode", "s = tl.where(t_ok[None, :], s * scale, float(\"-inf\"))",
            "s = tl.where(t_ok[None, :], s, float(\"-inf\"))", ("test_decode",), says="the scale is not applied"),
    Mistake("decode_no_rope", "decode", "        s += tl.dot(q_rope, tl.trans(k_r))  # (BLOCK_H, BLOCK_N)\n", "",
            ("test_decode",), says="RoPE part of the scores is left out"),
    Mistake("decode_padding_scored", "decode", "s = tl.where(t_ok[None, :], s * scale, float(\"-inf\"))",
            "s = s * scale  # the masked loads gave 0 anyway", ("test_decode",), says="-inf (not 0) for a score past"),
    # The visible test's lengths leave every split some tokens; a split past a sequence's end divides 0 by 0.
    Mistake("decode_empty_split_nan", "decode",
            "out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)", "out = acc / l[:, None]",
            ("test_decode",), says="0 / 0", hidden_only=True,
            also=("lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float(\"-inf\"))", "lse = m + tl.log(l)")),
    Mistake("paged_table_ignored", "paged", "rows = kv_ptr + page * stride_kp + (t % PAGE) * stride_kt",
            "rows = kv_ptr + (b * stride_tb + t // PAGE) * stride_kp + (t % PAGE) * stride_kt  # pages in order",
            ("test_paged",), says="block_table[b, t // PAGE]"),
    # FlashMLA's pages are 64 tokens, and so are the visible test's.
    Mistake("paged_size_hardcoded", "paged", "rows = kv_ptr + page * stride_kp + (t % PAGE) * stride_kt",
            "rows = kv_ptr + page * stride_kp + (t % 64) * stride_kt", ("test_paged",),
            says="The page size is PAGE", hidden_only=True,
            also=("table_ptr + b * stride_tb + t // PAGE", "table_ptr + b * stride_tb + t // 64")),
]
