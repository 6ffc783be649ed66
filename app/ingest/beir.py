"""Parser for BEIR-layout retrieval sets: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Unknown ids in qrels are errors rather than silently dropped: a mismatch between files almost always
means the user zipped the wrong version, and dropping pairs would quietly distort evaluation scores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.ingest._lines import check_file, iter_lines, json_type, parse_json_object
from app.ingest.errors import DatasetFormatError, DatasetTooLargeError
from app.ingest.types import Document, ParseLimits, RetrievalSet

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_SPLITS = 100


def _parse_id(obj: dict[str, Any], file_label: str, lineno: int) -> str:
    if "_id" not in obj:
        raise DatasetFormatError(file_label, "missing required field", line=lineno, field="_id")
    value = obj["_id"]
    # Some published sets write numeric ids as JSON numbers; integers map unambiguously to strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DatasetFormatError(
            file_label, f"expected a string or integer, got {json_type(value)}", line=lineno, field="_id"
        )
    ident = value.strip()
    if not ident:
        raise DatasetFormatError(file_label, "must not be empty", line=lineno, field="_id")
    if any(ch in ident for ch in "\t\r\n"):
        raise DatasetFormatError(file_label, "must not contain tabs or line breaks", line=lineno, field="_id")
    return ident


def _parse_str(
    obj: dict[str, Any],
    name: str,
    file_label: str,
    lineno: int,
    limits: ParseLimits,
    *,
    required: bool,
    non_empty: bool,
) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise DatasetFormatError(file_label, "missing required field", line=lineno, field=name)
        return ""
    if not isinstance(value, str):
        raise DatasetFormatError(file_label, f"expected a string, got {json_type(value)}", line=lineno, field=name)
    if non_empty and not value.strip():
        raise DatasetFormatError(file_label, "must not be empty", line=lineno, field=name)
    if len(value) > limits.max_text_chars:
        raise DatasetTooLargeError(
            file_label,
            f"text has {len(value)} characters, the limit is {limits.max_text_chars}",
            line=lineno,
            field=name,
        )
    return value


def _records(path: Path, file_label: str, limits: ParseLimits) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Each line's JSON object with its line number and its ``_id``, which must be unique in the file."""
    seen: dict[str, int] = {}
    for lineno, text in iter_lines(path, file_label, limits):
        obj = parse_json_object(text, file_label, lineno)
        ident = _parse_id(obj, file_label, lineno)
        first = seen.get(ident)
        if first is not None:
            raise DatasetFormatError(
                file_label, f"duplicate id '{ident}' (first seen on line {first})", line=lineno, field="_id"
            )
        seen[ident] = lineno
        yield lineno, ident, obj


def _parse_corpus(path: Path, file_label: str, limits: ParseLimits) -> dict[str, Document]:
    corpus: dict[str, Document] = {}
    for lineno, ident, obj in _records(path, file_label, limits):
        title = _parse_str(obj, "title", file_label, lineno, limits, required=False, non_empty=False)
        body = _parse_str(obj, "text", file_label, lineno, limits, required=True, non_empty=False)
        corpus[ident] = Document(id=ident, title=title, text=body)
    if not corpus:
        raise DatasetFormatError(file_label, "file contains no documents")
    return corpus


def _parse_queries(path: Path, file_label: str, limits: ParseLimits) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, ident, obj in _records(path, file_label, limits):
        queries[ident] = _parse_str(obj, "text", file_label, lineno, limits, required=True, non_empty=True)
    if not queries:
        raise DatasetFormatError(file_label, "file contains no queries")
    return queries


def _parse_qrels(
    path: Path,
    file_label: str,
    limits: ParseLimits,
    corpus: dict[str, Document],
    queries: dict[str, str],
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, text in iter_lines(path, file_label, limits):
        columns = [column.strip() for column in text.split("\t")]
        is_first, first = first, False
        if len(columns) != 3:
            raise DatasetFormatError(
                file_label,
                f"expected 3 tab-separated columns (query-id, corpus-id, score), found {len(columns)}",
                line=lineno,
            )
        qid, did, score_text = columns
        # The header is optional: a first row whose score column is not a number is taken as one.
        if is_first and not _NUMBER_RE.match(score_text):
            continue
        if not qid:
            raise DatasetFormatError(file_label, "empty query id", line=lineno, field="query-id")
        if not did:
            raise DatasetFormatError(file_label, "empty corpus id", line=lineno, field="corpus-id")
        if not _INT_RE.match(score_text):
            raise DatasetFormatError(
                file_label, f"expected an integer grade, got '{score_text}'", line=lineno, field="score"
            )
        if qid not in queries:
            raise DatasetFormatError(
                file_label, f"query id '{qid}' is not in {QUERIES_FILE}", line=lineno, field="query-id"
            )
        if did not in corpus:
            raise DatasetFormatError(
                file_label, f"corpus id '{did}' is not in {CORPUS_FILE}", line=lineno, field="corpus-id"
            )
        score = int(score_text)
        judged = qrels.setdefault(qid, {})
        previous = judged.get(did)
        if previous is not None and previous != score:
            raise DatasetFormatError(
                file_label,
                f"pair ({qid}, {did}) was already judged with grade {previous}, now {score}",
                line=lineno,
                field="score",
            )
        judged[did] = score
    if not qrels:
        raise DatasetFormatError(file_label, "file contains no judged pairs")
    return qrels


def parse_beir_dir(root: Path, limits: ParseLimits) -> RetrievalSet:
    """Read and validate a BEIR folder; raises DatasetFormatError naming the file (relative to root)."""
    corpus_path = root / CORPUS_FILE
    queries_path = root / QUERIES_FILE
    qrels_dir = root / QRELS_DIR
    total = check_file(corpus_path, CORPUS_FILE, limits) + check_file(queries_path, QUERIES_FILE, limits)
    if not qrels_dir.is_dir():
        raise DatasetFormatError(f"{QRELS_DIR}/", "folder is missing: expected qrels/<split>.tsv files")
    qrels_files = sorted(
        p for p in qrels_dir.iterdir() if p.suffix == ".tsv" and not p.name.startswith(".") and p.is_file()
    )
    if not qrels_files:
        raise DatasetFormatError(f"{QRELS_DIR}/", "no .tsv files found: expected qrels/<split>.tsv")
    if len(qrels_files) > _MAX_SPLITS:
        raise DatasetTooLargeError(f"{QRELS_DIR}/", f"more than {_MAX_SPLITS} qrels files")
    for path in qrels_files:
        label = f"{QRELS_DIR}/{path.name}"
        if not _SPLIT_RE.match(path.stem):
            raise DatasetFormatError(
                label, "split names may use only letters, digits, '_', '-' and '.' (64 characters at most)"
            )
        total += check_file(path, label, limits)
    if total > limits.max_bytes:
        raise DatasetTooLargeError(root.name or ".", f"files total {total} bytes, the limit is {limits.max_bytes}")

    corpus = _parse_corpus(corpus_path, CORPUS_FILE, limits)
    queries = _parse_queries(queries_path, QUERIES_FILE, limits)
    qrels = {path.stem: _parse_qrels(path, f"{QRELS_DIR}/{path.name}", limits, corpus, queries) for path in qrels_files}
    return RetrievalSet(corpus=corpus, queries=queries, qrels=qrels)


def _ignored(path: Path, extracted: Path) -> bool:
    parts = path.relative_to(extracted).parts
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def find_beir_root(extracted: Path) -> Path:
    """Locate the folder holding corpus.jsonl: the top itself, or the single nested folder that has one."""
    if (extracted / CORPUS_FILE).is_file():
        return extracted
    candidates = sorted(
        path.parent
        for path in extracted.rglob(CORPUS_FILE)
        if path.is_file() and not path.is_symlink() and not _ignored(path, extracted)
    )
    if not candidates:
        raise DatasetFormatError(CORPUS_FILE, "not found in the archive (expected a BEIR folder)")
    if len(candidates) > 1:
        listed = ", ".join(str(c.relative_to(extracted)) for c in candidates[:5])
        raise DatasetFormatError(
            CORPUS_FILE, f"found in {len(candidates)} folders ({listed}); upload one data set per archive"
        )
    return candidates[0]
