"""One MLA layer's weights in the released checkpoint formats: exact round trips, fp8, bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from attnlab import answers
from attnlab.lesson import checkpoints
from attnlab.models import MLAConfig

CFG = MLAConfig("ckpt", 32, 3, 12, 10, 6, 4, 5, 1)


def weights(seed: int = 0, cfg: MLAConfig = CFG, dtype=torch.float64) -> answers.MLAWeights:
    torch.manual_seed(seed)
    return answers.MLAWeights(cfg).to(dtype)


def same(a: answers.MLAWeights, b: answers.MLAWeights) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("naming", checkpoints.NAMINGS)
@pytest.mark.parametrize("layout", checkpoints.LAYOUTS)
def test_round_trips_are_exact(naming, layout):
    m = weights()
    sd = checkpoints.save(m, naming, layout, prefix="model.layers.3.self_attn.")
    back = checkpoints.load(weights(seed=1), sd, layout, prefix="model.layers.3.self_attn.")
    assert same(back, m)
    again = checkpoints.save(back, naming, layout, prefix="model.layers.3.self_attn.")
    assert sd.keys() == again.keys() and all(torch.equal(sd[k], again[k]) for k in sd)


def test_the_checkpoint_layout_is_the_one_the_models_use():
    m = weights()
    sd = checkpoints.save(m)
    H, n, r = CFG.n_heads, CFG.d_nope, CFG.d_rope
    assert {k: tuple(v.shape) for k, v in sd.items()} == checkpoints.expected_shapes(CFG)
    q_b = sd["q_b_proj.weight"].view(H, n + r, -1)  # per head: the compressed rows, then the RoPE rows
    assert torch.equal(q_b[1, :n], m.W_uq.weight.view(H, n, -1)[1]) and torch.equal(q_b[1, n:], m.W_qr.weight.view(H, r, -1)[1])
    kv_a = sd["kv_a_proj_with_mqa.weight"]  # the latent's rows, then the one RoPE key's
    assert torch.equal(kv_a[:CFG.d_latent], m.W_dkv.weight) and torch.equal(kv_a[CFG.d_latent:], m.W_kr.weight)
    kv_b = sd["kv_b_proj.weight"].view(H, n + CFG.d_v, -1)  # per head: k's rows, then v's
    assert torch.equal(kv_b[2, n:], m.W_uv.weight.view(H, CFG.d_v, -1)[2])
    assert set(checkpoints.save(m, "deepseek")) == {"wq_a.weight", "q_norm.weight", "wq_b.weight", "wkv_a.weight",
                                                    "kv_norm.weight", "wkv_b.weight", "wo.weight"}


def test_rotate_half_rows_are_the_interleaved_ones_permuted():
    """Workbook 03's permutation: the rotate-half checkpoint computes the same scores with rope_half."""
    m = weights()
    half = checkpoints.save(m, layout="rotate_half")
    H, n, r = CFG.n_heads, CFG.d_nope, CFG.d_rope
    W_qr_half = half["q_b_proj.weight"].view(H, n + r, -1)[:, n:].reshape(H * r, -1)
    assert torch.equal(W_qr_half, answers.permute_for_rotate_half(m.W_qr.weight, H))
    assert torch.equal(half["kv_a_proj_with_mqa.weight"][CFG.d_latent:], answers.permute_for_rotate_half(m.W_kr.weight, 1))


def test_fp8_weights_are_dequantised_by_their_block_scales():
    cfg = dataclasses.replace(CFG, d_model=160, d_q_latent=136)  # more than one 128 x 128 block, and partial blocks
    m = weights(cfg=cfg, dtype=torch.float32)
    sd = checkpoints.save(m)
    w = sd["q_a_proj.weight"]  # (136, 160): 2 x 2 blocks
    blocks = torch.stack([torch.stack([w[i:i + 128, j:j + 128].abs().amax() for j in (0, 128)]) for i in (0, 128)])
    scale_inv = blocks / 448.0  # e4m3's largest finite value
    w8 = (w / scale_inv.repeat_interleave(128, 0)[:136].repeat_interleave(128, 1)[:, :160]).to(torch.float8_e4m3fn)
    want = w8.float() * scale_inv.repeat_interleave(128, 0)[:136].repeat_interleave(128, 1)[:, :160]
    assert torch.equal(checkpoints.dequantize(w8, scale_inv), want)
    for naming, scale_name in (("hf", "q_a_proj.weight_scale_inv"), ("deepseek", "wq_a.scale")):
        sd = checkpoints.save(m, naming)
        weight_name = "q_a_proj.weight" if naming == "hf" else "wq_a.weight"
        sd[weight_name], sd[scale_name] = w8, scale_inv
        loaded = checkpoints.load(weights(seed=5, cfg=cfg, dtype=torch.float32), sd)
        assert torch.equal(loaded.W_dq.weight, want)
        assert (loaded.W_dq.weight - w).abs().max() <= 0.07 * w.abs().max()  # e4m3: 3 mantissa bits
    with pytest.raises(ValueError, match="weight_scale_inv"):
        checkpoints.load(weights(cfg=cfg), {**checkpoints.save(m), "q_a_proj.weight": w8})
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        checkpoints.dequantize(w8, scale_inv[:1])


@pytest.mark.parametrize("edit, words", [
    (lambda sd: sd.pop("kv_b_proj.weight"), r"kv_b_proj.weight is missing: expected a tensor of shape \(33, 12\)"),
    (lambda sd: sd.__setitem__("o_proj.weight", torch.zeros(32, 16)), r"o_proj.weight has shape \(32, 16\); .* \(32, 15\)"),
    (lambda sd: sd.clear() or sd.update({"q_proj.weight": torch.zeros(32, 32), "k_proj.weight": torch.zeros(8, 32)}),
     "q_proj.weight does not fit an MLA layer"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_by_name(edit, words):
    sd = checkpoints.save(weights())
    edit(sd)
    with pytest.raises(ValueError, match=words):
        checkpoints.load(weights(), sd)


def test_a_wrong_head_count_names_the_first_tensor_that_does_not_fit():
    sd = checkpoints.save(weights())
    four_heads = dataclasses.replace(CFG, n_heads=4)
    with pytest.raises(ValueError, match=r"q_b_proj.weight has shape \(30, 10\); this MLA layer expects \(40, 10\)"):
        checkpoints.load(weights(cfg=four_heads), sd)
    with pytest.raises(ValueError, match="layout"):
        checkpoints.load(weights(), sd, layout="halves")
    with pytest.raises(ValueError, match="naming"):
        checkpoints.save(weights(), naming="llama")
