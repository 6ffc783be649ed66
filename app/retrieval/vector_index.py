"""A FAISS inner-product index plus the document ids its rows stand for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"


@dataclass
class VectorIndex:
    index: faiss.Index
    doc_ids: list[str]

    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: list[str]) -> VectorIndex:
        """Exact inner product: on normalised vectors this is cosine similarity."""
        if vectors.shape[0] != len(doc_ids):
            raise ValueError("one vector per document id is needed")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index=index, doc_ids=list(doc_ids))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(query_vectors))]
        scores, rows = self.index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), k)
        return [
            [(self.doc_ids[r], float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            for row_ids, row_scores in zip(rows, scores, strict=True)
        ]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / IDS_FILE).write_text(json.dumps(self.doc_ids))

    @classmethod
    def load(cls, directory: Path) -> VectorIndex:
        index = faiss.read_index(str(directory / INDEX_FILE))
        doc_ids = json.loads((directory / IDS_FILE).read_text())
        return cls(index=index, doc_ids=doc_ids)
