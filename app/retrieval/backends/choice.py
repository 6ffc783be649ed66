"""Which backend serves a model and why: ``serving_backend.json`` in the model folder, written by the gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.retrieval.backends.spec import REFERENCE, Backend, parse_backend

CHOICE_FILE = "serving_backend.json"


@dataclass(frozen=True)
class ServingChoice:
    """``backend``: the label served; ``why``: one sentence; ``gate``: the accepted candidate's figures
    (paired validation nDCG@10 change and its interval, its seconds and speedup); ``tried``: every
    candidate's figures or error; ``reference``: torch fp32's seconds on the same scoring."""

    backend: str = REFERENCE.label
    why: str = "the reference: no other backend passed a gate"
    gate: dict[str, Any] | None = None
    tried: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] | None = None

    @property
    def parsed(self) -> Backend:
        return parse_backend(self.backend)

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / CHOICE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingChoice:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def load_choice(model_dir: Path | str) -> ServingChoice:
    """The model's recorded choice; the reference when it has none (bundled, uploaded, older models)."""
    path = Path(model_dir) / CHOICE_FILE
    return ServingChoice.from_dict(json.loads(path.read_text())) if path.is_file() else ServingChoice()
