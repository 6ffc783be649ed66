"""A FAISS inner-product index plus the document ids its rows stand for.

Three kinds, all inner product (cosine on normalised vectors):
- ``flat``: exact search; the reference, and the default below ``AUTO_FLAT_MAX`` documents;
- ``hnsw``: a graph (M=32), no training, good recall at low latency for large corpora;
- ``ivf``: inverted lists (nlist ~ 4*sqrt(n)) trained on the vectors; smallest build memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
KIND_FILE = "kind.json"
AUTO_FLAT_MAX = 200_000
IndexKind = Literal["flat", "hnsw", "ivf"]

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128
IVF_NPROBE = 32


def choose_kind(requested: str, n_docs: int) -> IndexKind:
    if requested == "auto":
        return "flat" if n_docs <= AUTO_FLAT_MAX else "hnsw"
    if requested not in ("flat", "hnsw", "ivf"):
        raise ValueError(f"unknown index type '{requested}'")
    return requested  # type: ignore[return-value]


def _tune(index: faiss.Index, kind: IndexKind) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        index.nprobe = IVF_NPROBE


@dataclass
class VectorIndex:
    index: faiss.Index
    doc_ids: list[str]
    kind: IndexKind = "flat"

    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: list[str], kind: IndexKind = "flat") -> VectorIndex:
        if vectors.shape[0] != len(doc_ids):
            raise ValueError("one vector per document id is needed")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            nlist = max(1, min(len(doc_ids) // 39, int(4 * math.sqrt(len(doc_ids)))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        index.add(vectors)
        _tune(index, kind)
        return cls(index=index, doc_ids=list(doc_ids), kind=kind)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def memory_bytes(self) -> int:
        """Bytes of the serialised index (what it holds in RAM, to within FAISS's small overheads)."""
        return int(faiss.serialize_index(self.index).nbytes)

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(query_vectors))]
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, rows = self.index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), k)
        return [
            [(self.doc_ids[r], float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            for row_ids, row_scores in zip(rows, scores, strict=True)
        ]

    def vectors(self) -> np.ndarray:
        """Every row's vector, in ``doc_ids`` order. All three kinds keep the vectors uncompressed (flat
        storage), so these are the vectors the index was built from, bit for bit."""
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / IDS_FILE).write_text(json.dumps(self.doc_ids))
        (directory / KIND_FILE).write_text(json.dumps({"kind": self.kind}))

    @classmethod
    def load(cls, directory: Path) -> VectorIndex:
        index = faiss.read_index(str(directory / INDEX_FILE))
        doc_ids = json.loads((directory / IDS_FILE).read_text())
        kind_file = directory / KIND_FILE
        kind = json.loads(kind_file.read_text())["kind"] if kind_file.exists() else "flat"
        _tune(index, kind)
        return cls(index=index, doc_ids=doc_ids, kind=kind)
