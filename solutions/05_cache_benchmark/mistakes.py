"""Planted mistakes of workbook 05_cache_benchmark; attnlab/instructor/mistakes.py says what each must show."""
from attnlab.instructor.mistakes import Mistake

MISTAKES = [
    Mistake("bf16_as_4_bytes", "bytes_per_token", '{"fp32": 4, "bf16": 2, "fp8": 1}', '{"fp32": 4, "bf16": 4, "fp8": 1}',
            ("test_bytes_per_token",), says="bf16 takes 2 bytes"),
    Mistake("mla_without_rope_key", "bytes_per_token", '"MLA": d_latent + d_rope,', '"MLA": d_latent,',
            ("test_bytes_per_token",), says="RoPE key is missing"),
    Mistake("mqa_uses_kv_heads", "bytes_per_token", '"MQA": 2 * d_head,', '"MQA": 2 * n_kv_heads * d_head,',
            ("test_bytes_per_token",), says="one K/V head"),
    # The visible test has bf16 and fp32 only: fp8 taken for a 2-byte type passes it.
    Mistake("fp8_as_2_bytes", "bytes_per_token", 'bytes_per_element = {"fp32": 4, "bf16": 2, "fp8": 1}[dtype]',
            'bytes_per_element = 4 if dtype == "fp32" else 2  # the others are half precision',
            ("test_bytes_per_token",), says="fp8 takes 1.", hidden_only=True),
    Mistake("context_ignores_weights", "longest_context", "free = gpu_bytes - n_params * weight_bytes_per_param",
            "free = gpu_bytes", ("test_longest_context",), says="forget the weights"),
    Mistake("context_ignores_batch", "longest_context", "(bytes_per_token * batch)", "bytes_per_token",
            ("test_longest_context",), says="a batch of 8 shares"),
    Mistake("context_negative", "longest_context", "return max(0, int(free // (bytes_per_token * batch)))",
            "return int(free // (bytes_per_token * batch))", ("test_longest_context",), says="do not fit"),
    # The visible test leaves weight_bytes_per_param at its default, 2: bf16's 2 bytes written in passes it.
    Mistake("context_default_weight_bytes", "longest_context", "free = gpu_bytes - n_params * weight_bytes_per_param",
            "free = gpu_bytes - n_params * 2  # bf16 weights", ("test_longest_context",),
            says="use weight_bytes_per_param", hidden_only=True),
    Mistake("timer_no_sync", "timer", "        if sync is not None:\n            sync()\n        samples",
            "        samples", ("test_timer",), says="call sync() before reading the clock",
            also=("        if sync is not None:\n            sync()\n        start", "        start")),
    Mistake("timer_times_warmup", "timer", "    for _ in range(warmup):\n        fn()\n", "", ("test_timer",)),
    Mistake("timer_mean", "timer", "return statistics.median(samples), samples",
            "return statistics.mean(samples), samples", ("test_timer",), says="That is the mean"),
    # The middle sample of the sorted list is the median only for an odd count, and the visible test has 7.
    Mistake("timer_middle_sample", "timer", "return statistics.median(samples), samples",
            "return sorted(samples)[len(samples) // 2], samples", ("test_timer",),
            says="the mean of the two middle ones", hidden_only=True),
]
