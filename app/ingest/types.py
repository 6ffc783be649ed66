"""Plain data types shared by the ingestion parsers, the store and the training/eval code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus passage; title may be empty."""

    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One FlagEmbedding-style training line: a query with positive and (optional) hard negatives."""

    query: str
    pos: list[str]
    neg: list[str]
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None


@dataclass(slots=True)
class RetrievalSet:
    """A BEIR-style set: corpus, queries and graded judgements per split (split -> qid -> did -> grade)."""

    corpus: dict[str, Document] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """Summary counts shown to users after an upload, so they can check it was read as intended."""
        grades: set[int] = set()
        splits: dict[str, dict[str, int]] = {}
        for split, by_query in self.qrels.items():
            pairs = 0
            for judged in by_query.values():
                pairs += len(judged)
                grades.update(judged.values())
            splits[split] = {"queries": len(by_query), "pairs": pairs}
        return {
            "docs": len(self.corpus),
            "queries": len(self.queries),
            "qrels": splits,
            "grades": sorted(grades),
        }


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Upper bounds that keep a hostile or mistaken upload from exhausting disk, memory or time."""

    max_bytes: int = 512 * 1024 * 1024
    max_lines: int = 2_000_000
    max_text_chars: int = 100_000
    max_list_items: int = 1000
