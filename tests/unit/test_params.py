"""Job parameter validation: documented defaults, and every typo or impossible value rejected up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.training.params import EmbedderParams, RerankerParams


def test_embedder_defaults():
    p = EmbedderParams()
    assert p.temperature == 0.05
    assert p.batch_size == 32
    assert p.train_group_size == 2
    assert p.hard_negatives == "auto"
    assert p.negative_rank_range == [10, 50]
    assert p.query_instruction == ""
    assert p.query_instruction_format == "{}{}"
    assert p.passage_instruction == ""
    assert p.normalize is True
    assert p.cached_loss is True and p.mini_batch_size == 16  # memory: docs/training.md, Memory
    assert p.attention_dropout == 0.0
    assert p.learning_rate == 5e-5  # the embedder's own default (measured; TrainingParams has 3e-5)
    assert p.epochs == 2.0
    assert p.max_steps is None
    assert p.eval_steps is None
    assert p.select_metric == "ndcg@10"
    assert p.train_split == "train"
    assert p.seed == 42


def test_reranker_defaults():
    p = RerankerParams()
    assert p.learning_rate == 1e-4  # overrides the shared 3e-5
    assert p.loss == "listwise"
    assert p.group_size == 8
    assert p.batch_size == 8
    assert p.label_scale == 2.0
    assert p.recall_k == 100
    assert p.candidate_model is None
    assert p.select_metric == "ndcg@10"


@pytest.mark.parametrize("cls", [EmbedderParams, RerankerParams])
@pytest.mark.parametrize("key", ["learning_rte", "temprature", "unknown", "lr"])
def test_unknown_key_rejected(cls, key):
    with pytest.raises(ValidationError) as info:
        cls.model_validate({key: 1})
    assert any(err["type"] == "extra_forbidden" and key in err["loc"] for err in info.value.errors())


def test_embedder_only_keys_are_unknown_to_the_reranker():
    with pytest.raises(ValidationError):
        RerankerParams.model_validate({"temperature": 0.05})
    with pytest.raises(ValidationError):
        EmbedderParams.model_validate({"group_size": 4})


def test_negative_rank_range_accepts_json_list():
    p = EmbedderParams.model_validate({"negative_rank_range": [0, 5]})
    assert p.negative_rank_range == [0, 5]


@pytest.mark.parametrize("bad", [[50, 10], [10, 10], [-1, 5], [1, 2, 3], [5], "10-50"])
def test_bad_negative_rank_range_rejected(bad):
    with pytest.raises(ValidationError):
        EmbedderParams.model_validate({"negative_rank_range": bad})


@pytest.mark.parametrize(
    "fmt", ["{}", "{}{}{}", "{1}{1}", "{}{}}", "{{}}{}", "no placeholders", "{instruction}{query}", ""]
)
def test_bad_query_instruction_format_rejected(fmt):
    with pytest.raises(ValidationError):
        EmbedderParams(query_instruction="Represent: ", query_instruction_format=fmt)


@pytest.mark.parametrize("fmt", ["{}{}", "Instruct: {}\nQuery: {}", "<{}> {}", "{0}{1}"])
def test_good_query_instruction_format_accepted(fmt):
    assert EmbedderParams(query_instruction_format=fmt).query_instruction_format == fmt


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (EmbedderParams, "temperature", 0),
        (EmbedderParams, "temperature", 1.5),
        (EmbedderParams, "batch_size", 1),
        (EmbedderParams, "train_group_size", 0),
        (EmbedderParams, "hard_negatives", "random"),
        (EmbedderParams, "select_metric", "map"),
        (EmbedderParams, "epochs", 0),
        (EmbedderParams, "learning_rate", 0.1),
        (EmbedderParams, "max_steps", 0),
        (RerankerParams, "loss", "pairwise"),
        (RerankerParams, "group_size", 1),
        (RerankerParams, "recall_k", 0),
        (RerankerParams, "first_stage_weight", 1.5),
        (RerankerParams, "first_stage_weight", "best"),
    ],
)
def test_out_of_range_values_rejected(cls, field, value):
    with pytest.raises(ValidationError):
        cls.model_validate({field: value})


@pytest.mark.parametrize("weight", [0, 0.3, 1, "auto"])
def test_first_stage_weight_is_a_weight_or_auto(weight):
    assert RerankerParams.model_validate({"first_stage_weight": weight}).first_stage_weight == weight


def test_reranker_negative_depth_and_refused_combinations():
    from app.training.reranker import negative_ranks

    assert negative_ranks(RerankerParams(group_size=8)) == (0, 32)
    assert negative_ranks(RerankerParams(negative_rank_range=[0, 100])) == (0, 100)
    with pytest.raises(ValidationError, match="negative_rank_range"):
        RerankerParams(negative_rank_range=[5, 5])
    # bce labels are grade > 0: adding the first stage's scores would make every passage a positive.
    with pytest.raises(ValidationError, match="bce"):
        RerankerParams(loss="bce", first_stage_temperature=1.0)


def test_a_serving_backend_job_gates_the_backends_it_names_else_the_services_else_every_cpu_export(tmp_path):
    from app.core.config import Settings
    from app.services.existing_model_gate import DEFAULT_CANDIDATES, gate_settings
    from app.training.params import ServingBackendParams

    service_wide = Settings(data_dir=tmp_path, serving_backends=["openvino-int8"], serving_gate_tolerance=0.02)
    named = gate_settings(service_wide, ServingBackendParams(backends=[" onnx-int8"], tolerance=0.005, min_speedup=0.0))
    assert (named.serving_backends, named.serving_gate_tolerance, named.serving_gate_min_speedup) == (
        ["onnx-int8"], 0.005, 0.0)  # fmt: skip
    inherited = gate_settings(service_wide, ServingBackendParams())
    assert (inherited.serving_backends, inherited.serving_gate_tolerance) == (["openvino-int8"], 0.02)
    assert inherited.serving_gate_min_speedup == 1.0  # a backend slower than torch fp32 never serves by default
    assert gate_settings(Settings(data_dir=tmp_path), ServingBackendParams()).serving_backends == DEFAULT_CANDIDATES
    bad_params = ({"backends": ["onnx-bf16"]}, {"backends": []}, {"tolerance": 1.0}, {"min_speedup": -1.0})
    for bad in (*bad_params, {"rerank_k": 0}):
        with pytest.raises(ValidationError):
            ServingBackendParams(**bad)
