"""Dataset ingestion: parse and validate uploads (training JSONL, BEIR folders, archives) and store them
in one normalized layout. Pure standard library, so it can run in the API process and the worker alike.
"""

from app.ingest.archive import MAX_ARCHIVE_MEMBERS, extract_archive
from app.ingest.beir import find_beir_root, parse_beir_dir
from app.ingest.errors import DatasetFormatError, DatasetTooLargeError
from app.ingest.store import (
    read_retrieval_set,
    read_training_examples,
    training_examples_to_retrieval_set,
    write_retrieval_set,
    write_training_examples,
)
from app.ingest.training_jsonl import parse_training_jsonl
from app.ingest.types import Document, ParseLimits, RetrievalSet, TrainingExample

__all__ = [
    "MAX_ARCHIVE_MEMBERS",
    "DatasetFormatError",
    "DatasetTooLargeError",
    "Document",
    "ParseLimits",
    "RetrievalSet",
    "TrainingExample",
    "extract_archive",
    "find_beir_root",
    "parse_beir_dir",
    "parse_training_jsonl",
    "read_retrieval_set",
    "read_training_examples",
    "training_examples_to_retrieval_set",
    "write_retrieval_set",
    "write_training_examples",
]
