"""Which queries a model was trained on, and the refusal of jobs that would evaluate on them.

A model trained by Retune records the normalised texts (SHA-1) of its training queries, plus those of
the models it started from, in ``provenance.json`` in its folder. A new job whose ``base_model`` or
``candidate_model`` saw any of the job's validation or test queries would report a figure on queries
the model has already learnt: it is refused with a 422 naming the model and the overlap, unless the
request sets ``eval.allow_overlap``, and then every metric of the job is labelled contaminated.
Texts rather than ids: a mined dataset (new ids) or a copy of a dataset under another name still
carries the same queries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InvalidRequestError
from app.db.tables import Dataset, Model
from app.services import storage
from app.training.data import EvalSpec, prepare

PROVENANCE_FILE = "provenance.json"


class ContaminatedEvaluationError(InvalidRequestError):
    """The job would evaluate on queries its base or candidate model was trained on."""


def query_hash(text: str) -> str:
    return hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest()


def trained_hashes(settings: Settings, row: Model | None) -> set[str]:
    """The query hashes a registered model was trained on (none for bundled or uploaded models)."""
    if row is None or row.source != "job":
        return set()
    raw = storage.store(settings).read_bytes(row.path, PROVENANCE_FILE)
    return set(json.loads(raw)["trained_query_sha1"]) if raw is not None else set()


def write_provenance(
    model_dir: Path, dataset_id: str, train_queries: dict[str, str], inherited: Iterable[set[str]]
) -> None:
    hashes = {query_hash(t) for t in train_queries.values()}.union(*inherited)
    payload = {
        "dataset_id": dataset_id,
        "trained_query_ids": sorted(train_queries),
        "trained_query_sha1": sorted(hashes),
    }
    (model_dir / PROVENANCE_FILE).write_text(json.dumps(payload))


def check_evaluation_queries(
    session: Session,
    settings: Settings,
    dataset: Dataset,
    eval_spec: dict[str, Any],
    params: dict[str, Any],
    models: dict[str, Model | None],
    allow_overlap: bool,
) -> bool:
    """True when the job evaluates on queries one of ``models`` (field name -> row) trained on and the
    caller allowed it; raises :class:`ContaminatedEvaluationError` when it did not allow it."""
    trained = {field: hashes for field, row in models.items() if (hashes := trained_hashes(settings, row))}
    if not trained:
        return False  # nothing to read: the common case costs no dataset read
    data = prepare(
        storage.local_copy(settings, dataset.path), dataset.format, EvalSpec(**eval_spec),
        params.get("train_split", "train"), params.get("max_train_queries"),
    )  # fmt: skip
    evaluated = {query_hash(t) for t in [*data.validation_queries.values(), *data.eval_queries.values()]}
    overlaps = {field: len(hashes & evaluated) for field, hashes in trained.items() if hashes & evaluated}
    if overlaps and not allow_overlap:
        named = "; ".join(
            f"{field} '{models[field].id}' was trained on {n} of this job's {len(evaluated)} validation and test "
            "queries"
            for field, n in overlaps.items()
        )
        raise ContaminatedEvaluationError(
            f"{named} (matched by text). Evaluate on other queries, or set eval.allow_overlap true to proceed: "
            "every metric is then labelled contaminated"
        )
    return bool(overlaps)
