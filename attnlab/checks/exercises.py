"""Which workbook asks for what, and what each exercise builds on.

A test cell says only which exercise it checks (``with exercise("gqa_attention"):``);
this table gives :func:`attnlab.checks.exercise` the rest:

- ``uses``: the earlier exercises of the same workbook that this one calls.
  The tests hand it the course's correct versions of them (stand-ins), so a
  mistake in an earlier exercise costs that exercise's points and no others;
- ``given``: answers of earlier workbooks (and the course's own helpers) that
  a workbook hands its learners as building blocks, by ``__qualname__``. Every
  other reference answer raises inside the check (:mod:`attnlab.guard`);
- ``by_hand``: a backward pass written by hand; autograd is off in its check.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str
    workbook: str
    uses: tuple[str, ...] = ()
    given: tuple[str, ...] = ()
    by_hand: bool = False


HEADS = ("attention", "split_heads", "merge_heads")  # what workbook 01's layer is built from
MLA_PARTS = ("rms_norm", "compress_kv", "up_project_kv", "compress_q", "decoupled_rope")

# Per workbook: the building blocks it is given, then its exercises in order, each
# with what it uses (same workbook) and anything it is given beyond the workbook's.
_WORKBOOKS = {
    "01_mha": ((), {
        "attention": {}, "split_heads": {}, "merge_heads": {},
        "MultiHeadAttention": {"uses": HEADS},
        "attention_backward": {"by_hand": True},
        "AttentionFunction": {"uses": ("attention", "attention_backward")},
        "KVCache": {}, "mha_step": {"uses": HEADS},
        "kv_cache_elements_per_token": {}, "kv_cache_bytes": {},
    }),
    "02_gqa": (("attention", "attention_backward", "split_heads", "merge_heads", "KVCache.update"), {
        "repeat_kv": {}, "gqa_attention_expanded": {}, "gqa_attention": {},
        "GroupedQueryAttention": {"uses": ("gqa_attention", "repeat_kv")},
        "sum_over_groups": {},
        "gqa_attention_backward": {"uses": ("repeat_kv",), "by_hand": True},
        "mean_pool_heads": {"given": ("mha_forward", "gqa_forward")},
        "conversion_error": {"uses": ("mean_pool_heads",), "given": ("mha_forward", "gqa_forward")},
        "gqa_cache_elements_per_token": {}, "cache_fraction_of_mha": {},
    }),
    "03_rope": (("attention", "split_heads", "merge_heads", "KVCache.update", "gqa_attention", "repeat_kv",
                 "gqa_forward"), {
        "rope_frequencies": {}, "rope_tables": {}, "rope_interleaved": {}, "rope_half": {},
        "permute_for_rotate_half": {},
        "is_relative": {"uses": ("rope_tables", "rope_interleaved", "rope_half")},
        "rope_gqa_step": {"uses": ("rope_tables", "rope_interleaved")},
        "absorb": {}, "absorbed_scores": {},
        "yarn_frequencies": {}, "yarn_softmax_scale": {},
    }),
    "04_mla": (("attention", "attention_backward", "split_heads", "merge_heads", "rope_tables", "rope_interleaved",
                "rope_frequencies", "causal_mask"), {
        "rms_norm": {},
        "compress_kv": {"uses": ("rms_norm",)}, "up_project_kv": {"uses": ("rms_norm",)},
        "compress_q": {"uses": ("rms_norm",)}, "decoupled_rope": {},
        "mla_forward": {"uses": MLA_PARTS}, "mla_absorbed_step": {"uses": MLA_PARTS},
        "mla_kv_backward": {"uses": MLA_PARTS, "by_hand": True},
        "mla_cache_elements_per_token": {}, "cache_gib": {},
    }),
    "05_cache_benchmark": ((), {"cache_bytes_per_token": {}, "longest_context": {}, "median_time": {}}),
    "06_beyond": (("attention", "split_heads", "merge_heads", "causal_mask", "repeat_kv", "gqa_attention",
                   "rope_frequencies", "rope_tables", "rope_interleaved"), {
        "gqa_as_mla": {}, "joint_svd": {}, "partial_rope": {}, "pairs_by_norm": {},
    }),
    "07_flash_mla": ((), {
        "online_softmax_update": {}, "merge_partials": {}, "scores_kernel": {},
        "mla_decode_kernel": {}, "paged_mla_decode_kernel": {},
    }),
}

EXERCISES: dict[str, Exercise] = {
    name: Exercise(name, workbook, tuple(spec.get("uses", ())), tuple(given) + tuple(spec.get("given", ())),
                   spec.get("by_hand", False))
    for workbook, (given, exercises) in _WORKBOOKS.items() for name, spec in exercises.items()}


def given_of(workbook: str, everywhere: bool = False) -> tuple[str, ...]:
    """The building blocks workbook ``workbook`` hands its learners (``KVCache.update``, ``attention``): those
    of every exercise; with ``everywhere``, also those that only some exercises are given (outside a test,
    an ungraded cell may call them)."""
    given, exercises = _WORKBOOKS[workbook]
    extra = (g for spec in exercises.values() for g in spec.get("given", ())) if everywhere else ()
    return tuple(dict.fromkeys((*given, *extra)))


def lookup(*names: str) -> Exercise:
    """One check of one or more exercises (of one workbook): what they use and are given together."""
    unknown = [n for n in names if n not in EXERCISES]
    if not names or unknown:
        raise ValueError(f"no exercise is called {unknown[0] if unknown else '(nothing)'!r}: the exercises are "
                         + ", ".join(EXERCISES))
    found = [EXERCISES[n] for n in names]
    if len({e.workbook for e in found}) > 1:
        raise ValueError(f"{', '.join(names)} are exercises of different workbooks")
    uses = tuple(dict.fromkeys(u for e in found for u in e.uses if u not in names))
    given = tuple(dict.fromkeys(g for e in found for g in e.given))
    return Exercise(", ".join(names), found[0].workbook, uses, given, any(e.by_hand for e in found))
