"""Pseudo-queries cut from the corpus: many more distinct training pairs than the judged queries give.

A sentence of a passage serves as the query and the rest of the passage as its positive (the
Inverse Cloze Task, Lee et al., ACL 2019). Why: a reranker grown from a bi-encoder body must learn
its head and cross-attention scoring from scratch, and a reranker job usually has a few hundred
judged queries; every uploaded corpus gives one pseudo-query per passage for free, from the very
texts search will rank. Written here because sentence-transformers has no such data builder.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.ingest.types import Document

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_QUERY_WORDS = 6  # shorter sentences ("see fig. 2 .") say too little to be a query
ID_PREFIX = "pseudo-query:"


@dataclass(frozen=True, slots=True)
class PseudoQuery:
    id: str
    query: str  # one sentence of the source passage
    source_doc: str  # the passage it was cut from (never a negative of its own query)
    positive: Document  # the source passage without that sentence


def cut_pseudo_queries(corpus: Mapping[str, Document], count: int, seed: int) -> list[PseudoQuery]:
    """Up to ``count`` pseudo-queries, one per passage, passages and sentences drawn by ``seed``.

    A passage needs two sentences or more and one of at least MIN_QUERY_WORDS words that is not its
    title (some corpora repeat the title as the first sentence): else it is skipped.
    """
    rng = random.Random(seed)
    doc_ids = sorted(corpus)
    rng.shuffle(doc_ids)
    cut: list[PseudoQuery] = []
    for doc_id in doc_ids:
        if len(cut) >= count:
            break
        doc = corpus[doc_id]
        sentences = [s.strip() for s in SENTENCE_END.split(doc.text.strip()) if s.strip()]
        usable = [i for i, s in enumerate(sentences) if len(s.split()) >= MIN_QUERY_WORDS and s != doc.title.strip()]
        if len(sentences) < 2 or not usable:
            continue
        pick = rng.choice(usable)
        rest = " ".join(s for i, s in enumerate(sentences) if i != pick)
        cut.append(
            PseudoQuery(
                id=f"{ID_PREFIX}{doc_id}",
                query=sentences[pick],
                source_doc=doc_id,
                positive=Document(id=f"{ID_PREFIX}{doc_id}:positive", title=doc.title, text=rest),
            )
        )
    return cut
