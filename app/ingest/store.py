"""Normalized on-disk layout of a stored dataset, so every later stage reads exactly one format.

A stored retrieval set is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv with LF line
ends and a header); a stored training set is a folder holding train.jsonl. Files are written to a
temporary name and renamed, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from app.ingest.beir import CORPUS_FILE, QRELS_DIR, QUERIES_FILE, parse_beir_dir
from app.ingest.training_jsonl import parse_training_jsonl
from app.ingest.types import Document, ParseLimits, RetrievalSet, TrainingExample

TRAIN_FILE = "train.jsonl"
TRAIN_SPLIT = "train"
# Stored data was validated on upload; re-reading it must not fail on the upload limits.
_TRUSTED_LIMITS = ParseLimits(max_bytes=2**62, max_lines=2**62, max_text_chars=2**62, max_list_items=2**62)


@contextmanager
def _atomic_write(path: Path) -> Iterator[IO[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def _check_id(ident: str, what: str) -> None:
    if not ident or ident != ident.strip() or any(ch in ident for ch in "\t\r\n"):
        raise ValueError(f"{what} id {ident!r} cannot be stored: empty, padded or holding tabs/line breaks")


def write_retrieval_set(rs: RetrievalSet, directory: Path) -> None:
    """Write rs in normalized BEIR layout under directory (created if needed)."""
    if not rs.qrels or any(not by_query for by_query in rs.qrels.values()):
        raise ValueError("a retrieval set needs at least one split, and every split needs judged pairs")
    with _atomic_write(directory / CORPUS_FILE) as out:
        for ident, doc in rs.corpus.items():
            _check_id(ident, "document")
            out.write(_dumps({"_id": ident, "title": doc.title, "text": doc.text}) + "\n")
    with _atomic_write(directory / QUERIES_FILE) as out:
        for ident, text in rs.queries.items():
            _check_id(ident, "query")
            out.write(_dumps({"_id": ident, "text": text}) + "\n")
    for split, by_query in rs.qrels.items():
        with _atomic_write(directory / QRELS_DIR / f"{split}.tsv") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            for qid, judged in by_query.items():
                for did, grade in judged.items():
                    out.write(f"{qid}\t{did}\t{int(grade)}\n")


def read_retrieval_set(directory: Path) -> RetrievalSet:
    """Load a set written by write_retrieval_set."""
    return parse_beir_dir(directory, _TRUSTED_LIMITS)


def write_training_examples(examples: Iterable[TrainingExample], directory: Path) -> None:
    """Write examples as directory/train.jsonl in FlagEmbedding format (optional keys only when set)."""
    count = 0
    with _atomic_write(directory / TRAIN_FILE) as out:
        for example in examples:
            obj: dict[str, Any] = {"query": example.query, "pos": example.pos, "neg": example.neg}
            if example.pos_scores is not None:
                obj["pos_scores"] = example.pos_scores
            if example.neg_scores is not None:
                obj["neg_scores"] = example.neg_scores
            if example.prompt is not None:
                obj["prompt"] = example.prompt
            out.write(_dumps(obj) + "\n")
            count += 1
        if count == 0:
            raise ValueError("no training examples to write")


def read_training_examples(directory: Path) -> list[TrainingExample]:
    """Load examples written by write_training_examples."""
    return parse_training_jsonl(directory / TRAIN_FILE, TRAIN_FILE, _TRUSTED_LIMITS)


def _stable_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def training_examples_to_retrieval_set(examples: list[TrainingExample]) -> RetrievalSet:
    """View a training set as a retrieval set (split 'train'), so held-out queries can be evaluated.

    Ids are content hashes, so the same text gets the same id across uploads and runs; lines that
    repeat a query text are merged into one query with the union of their positives (grade 1).
    """
    corpus: dict[str, Document] = {}
    queries: dict[str, str] = {}
    judged: dict[str, dict[str, int]] = {}

    def add_doc(text: str) -> str:
        did = _stable_id("d", text)
        existing = corpus.get(did)
        if existing is None:
            corpus[did] = Document(id=did, title="", text=text)
        elif existing.text != text:  # 48-bit hash collision: astronomically unlikely, but never silent
            raise ValueError(f"document id collision for {did}")
        return did

    for example in examples:
        qid = _stable_id("q", example.query)
        previous = queries.setdefault(qid, example.query)
        if previous != example.query:
            raise ValueError(f"query id collision for {qid}")
        positives = judged.setdefault(qid, {})
        for text in example.pos:
            positives[add_doc(text)] = 1
        for text in example.neg:
            add_doc(text)
    return RetrievalSet(corpus=corpus, queries=queries, qrels={TRAIN_SPLIT: judged} if judged else {})
