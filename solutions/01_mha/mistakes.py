"""Planted mistakes of workbook 01_mha; attnlab/instructor/mistakes.py says what each must show."""
from attnlab.instructor.mistakes import Mistake

MISTAKES = [
    Mistake("no_scale", "attention", " / math.sqrt(q.shape[-1])", "", ("test_attention",),
            says="the 1/sqrt(d) scale is missing"),
    Mistake("softmax_wrong_axis", "attention", "torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)",
            ("test_attention",), says="the softmax runs over the query axis"),
    Mistake("mask_hides_self", "attention", "tril(diagonal=Tk - Tq)", "tril(diagonal=Tk - Tq - 1)",
            ("test_attention",), says="hides each token from itself"),
    Mistake("mask_top_left", "attention", "tril(diagonal=Tk - Tq)", "tril(diagonal=0)",
            ("test_attention",), says="aligned top-left"),
    Mistake("attention_calls_reference", "attention", "Tq, Tk = q.shape[-2], k.shape[-2]",
            "return answers.attention(q, k, v, causal)", ("test_attention",), says="switched off"),
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
            ("test_backward",)),
    Mistake("backward_no_rowsum", "backward", "dS = P * (dP - (dP * P).sum(dim=-1, keepdim=True))", "dS = P * dP",
            ("test_backward",), says="dq (causal=False) is wrong"),
    Mistake("backward_by_autograd", "backward", "Tq, Tk = q.shape[-2], k.shape[-2]\n    scale",
            "qkv = [t.detach().requires_grad_() for t in (q, k, v)]\n"
            "    with torch.enable_grad():\n"
            "        return torch.autograd.grad(attention(*qkv, causal=causal), qkv, dout)\n"
            "    Tq, Tk = q.shape[-2], k.shape[-2]\n    scale", ("test_backward",)),
    Mistake("backward_no_scale_dq", "backward", "dq = dS @ k * scale", "dq = dS @ k",
            ("test_backward",)),
    # The Function's wiring; its check runs with the course's attention_backward.
    Mistake("function_forgets_none", "backward", "return dq, dk, dv, None", "return dq, dk, dv",
            ("test_autograd_function",)),
    Mistake("function_saves_k_for_v", "backward", "ctx.save_for_backward(q, k, v)", "ctx.save_for_backward(q, k, k)",
            ("test_autograd_function",)),
    Mistake("cache_wrong_axis", "kv_cache", "torch.cat([self.k, k_new], dim=2)", "torch.cat([self.k, k_new], dim=1)",
            ("test_kv_cache",)),
    Mistake("cache_not_kept", "kv_cache", "self.k = torch.cat([self.k, k_new], dim=2)", "self.k = k_new",
            ("test_kv_cache",)),
    Mistake("cache_size_forgets_v", "cache_size", "return 2 * n_heads * d_head * n_layers",
            "return n_heads * d_head * n_layers", ("test_cache_size",), says="both K and V"),
    Mistake("cache_size_fp32", "cache_size", "* batch * bytes_per_element", "* batch * 4", ("test_cache_size",)),
    Mistake("cache_size_hard_coded", "cache_size", "return 2 * n_heads * d_head * n_layers",
            "return 262_144", ("test_cache_size",)),

    # Mistakes the visible checks let through: only the hidden tests catch them.
    # The visible check's values are as wide as its keys, so the wrong width goes unseen.
    Mistake("scale_by_value_width", "attention", " / math.sqrt(q.shape[-1])", " / math.sqrt(v.shape[-1])",
            ("test_attention",), says="scaled by the values' width Dv", hidden_only=True),
    # The head count of the visible example, typed in instead of n_heads.
    Mistake("split_heads_four_heads", "heads", "x.view(B, T, n_heads, C // n_heads)", "x.view(B, T, 4, C // 4)",
            ("test_heads",), says="split_heads(x, ", hidden_only=True),
    # .data gives the right values and no gradient to W_q; the visible check runs under no_grad.
    Mistake("mha_q_from_weight_data", "mha", "q = split_heads(self.W_q(x), self.n_heads)",
            "q = split_heads(x @ self.W_q.weight.data.T, self.n_heads)", ("test_mha",),
            says="no gradient reaches W_q", hidden_only=True),
    # Gradients shaped like q: right whenever keys, values and queries have one shape, as in the visible check.
    Mistake("function_grads_shaped_like_q", "backward", "return dq, dk, dv, None",
            "return dq, dk.view_as(q), dv.view_as(q), None", ("test_autograd_function",),
            says="AttentionFunction with", hidden_only=True),
    # A mask aligned top-left in the backward pass: right whenever Tq == Tk, as in the visible checks.
    Mistake("backward_mask_top_left", "backward", "tril(diagonal=Tk - Tq)", "tril(diagonal=0)",
            ("test_backward",), says="attention_backward with", hidden_only=True),
    # "Only the prompt needs a causal mask": right for a prefill into an empty cache and for one-token
    # steps, wrong for a step of several tokens after earlier ones.
    Mistake("kv_mask_only_prefill", "kv_cache", "k, v = cache.update(",
            "prefill = len(cache) == 0\n    k, v = cache.update(", ("test_kv_cache",),
            says="new token(s) after", also=("causal=True)))", "causal=prefill)))"),
            hidden_only=True),
    # The visible check only asks for one sequence, so the batch it leaves out goes unseen.
    Mistake("cache_bytes_ignore_batch", "cache_size", "* seq_len * batch * bytes_per_element",
            "* seq_len * bytes_per_element", ("test_cache_size",), says="a batch of",
            hidden_only=True),
]
