"""The model card (README.md) put in every downloaded model folder.

sentence-transformers writes a card itself when a model is saved (``model.save`` renders its
``model_card_data``), and Retune keeps it: its YAML metadata (library, pipeline tag, tags) is the header of
this card and its body (architecture, usage, citations) is the last section. What it cannot say is
added here, because its card data is collected from a live trainer and its own evaluators, while
Retune's evaluation lives in the job's stored metric points, its parameters in the job row and its
dataset in the dataset row: those are rendered from the database at download time. huggingface_hub's
``ModelCard`` parses and writes the YAML header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Dataset, Job, MetricPoint, Model
from app.training.params import EmbedderParams, MiningParams, RerankerParams

_DEFAULT_PARAMS = {"embedder": EmbedderParams, "reranker": RerankerParams, "mine_negatives": MiningParams}
_TRAIN_SPLIT = "train"
_MAX_LOSS_ROWS = 100
_VERDICT_WORDS = ("verdict", "interval", "ci_low", "ci_high", "p_value")
_LIBRARIES = ("sentence-transformers", "transformers", "torch", "faiss-cpu", "pytrec-eval-terrier", "retune")


def chosen_step(points: Sequence[MetricPoint], metric: str) -> tuple[str, int] | None:
    """(split, step) of the kept model: the first maximum of ``metric`` after step 0, as BestModel keeps it.

    Models are selected on a ``validation`` split when the job has one, else on its evaluation split; a
    reranker that fuses keeps the best fused order (``<split>/fused``), else its own order.
    """
    splits = {p.split for p in points if p.name == metric and p.step > 0 and p.split != _TRAIN_SPLIT}
    if not splits:
        return None
    split = min(splits, key=lambda s: (not s.startswith("validation"), not s.endswith("/fused"), s.count("/"), s))
    best: MetricPoint | None = None
    for point in sorted((p for p in points if p.split == split and p.name == metric and p.step > 0), key=_order):
        if best is None or point.value > best.value:
            best = point
    return (split, best.step) if best else None


def _order(point: MetricPoint) -> tuple[int, int]:
    return point.step, point.id or 0


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def evaluation_section(points: Sequence[MetricPoint], metric: str) -> str:
    """Base (step 0) vs kept model per evaluation split and metric, for whatever splits and metrics were stored."""
    chosen = chosen_step(points, metric)
    kept_step = chosen[1] if chosen else None
    values: dict[tuple[str, str], dict[int, float]] = {}
    for p in sorted(points, key=_order):
        if p.split != _TRAIN_SPLIT:
            values.setdefault((p.split, p.name), {})[p.step] = p.value
    if not values:
        return "## Evaluation\n\nNo evaluation was recorded for this model."
    rows = []
    for (split, name), by_step in sorted(values.items()):
        base, kept = by_step.get(0), by_step.get(kept_step) if kept_step is not None else None
        delta = kept - base if base is not None and kept is not None else None
        rows.append((split, name, base, kept, delta))
    header = ["split", "metric", "base (step 0)", f"this model (step {kept_step})", "change"]
    intro = (
        f"Held-out queries, scored by pytrec_eval. This model is the checkpoint of step {kept_step}, "
        f"the best {metric} on split `{chosen[0]}`."
        if chosen
        else "Held-out queries, scored by pytrec_eval."
    )
    return f"## Evaluation\n\n{intro}\n\n{_table(header, rows)}"


def loss_section(points: Sequence[MetricPoint]) -> str:
    losses = sorted((p for p in points if p.split == _TRAIN_SPLIT and p.name == "loss"), key=_order)
    if not losses:
        return "## Training loss\n\nNo training loss was recorded."
    stride = max(1, -(-len(losses) // _MAX_LOSS_ROWS))
    shown = losses[::stride] + ([losses[-1]] if (len(losses) - 1) % stride else [])
    note = f" (every {stride}th of {len(losses)} logged values, and the last)" if stride > 1 else ""
    rows = [(p.step, round(p.epoch, 4), p.value) for p in shown]
    return f"## Training loss\n\nLoss as logged during training{note}.\n\n{_table(['step', 'epoch', 'loss'], rows)}"


def params_section(job: Job) -> str:
    defaults = _DEFAULT_PARAMS[job.kind]().model_dump(mode="json")
    changed = [
        (k, json.dumps(v), json.dumps(defaults.get(k))) for k, v in sorted(job.params.items()) if defaults.get(k) != v
    ]
    body = _table(["parameter", "value", "default"], changed) if changed else "All parameters at their defaults."
    return f"## Training parameters\n\nParameters of job `{job.id}` that differ from Retune's defaults.\n\n{body}"


def calibration_section(folder: Path) -> str | None:
    """The summary of ``calibration.json`` when the model folder has one (its scalar fields, or its ``summary``)."""
    path = folder / "calibration.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "## Calibration\n\n`calibration.json` is present but could not be read."
    summary = data.get("summary", data) if isinstance(data, dict) else {}
    if not isinstance(summary, dict):
        summary = {}
    rows = [(k, v) for k, v in summary.items() if isinstance(v, str | int | float | bool)]
    body = _table(["field", "value"], rows) if rows else "See `calibration.json` in this folder."
    return f"## Calibration\n\nFrom `calibration.json` (shipped in this folder).\n\n{body}"


def verdict_section(row: Model) -> str:
    rows: list[tuple[str, Any]] = [("better_than_base", row.better_than_base)]
    for column in Model.__table__.columns:
        if any(word in column.name for word in _VERDICT_WORDS):
            rows.append((column.name, getattr(row, column.name, None)))
    return f"## Verdict\n\n{_table(['field', 'value'], rows)}"


def versions_section(folder: Path) -> str:
    saved: dict[str, Any] = {}
    config = folder / "config_sentence_transformers.json"
    if config.is_file():
        saved = json.loads(config.read_text()).get("__version__", {}) or {}
    rows = [(f"{name} (saved with)", version) for name, version in saved.items()]
    for name in _LIBRARIES:
        try:
            rows.append((f"{name} (this server)", metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return f"## Library versions\n\n{_table(['library', 'version'], rows)}"


def usage_section(kind: str, folder_name: str) -> str:
    if kind == "reranker":
        code = (
            "from sentence_transformers import CrossEncoder\n\n"
            f'model = CrossEncoder("{folder_name}")\n'
            'scores = model.predict([("a query", "a passage"), ("a query", "another passage")])'
        )
    else:
        code = (
            "from sentence_transformers import SentenceTransformer\n\n"
            f'model = SentenceTransformer("{folder_name}")\n'
            'queries = model.encode_query(["a query"])\n'
            'passages = model.encode_document(["a passage", "another passage"])\n'
            "scores = model.similarity(queries, passages)"
        )
    return (
        "## Usage\n\nThe folder is in sentence-transformers format: extract the archive and load the folder.\n\n"
        f"```python\n{code}\n```"
    )


def dataset_section(dataset: Dataset | None) -> str:
    if dataset is None:
        return "## Training data\n\nThe dataset this model was trained on is no longer stored."
    stats = dataset.stats or {}
    rows: list[tuple[str, Any]] = [("name", dataset.name), ("format", dataset.format)]
    for key, value in stats.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", json.dumps(v) if isinstance(v, dict | list) else v) for k, v in value.items()]
        else:
            rows.append((key, json.dumps(value) if isinstance(value, list) else value))
    return f"## Training data\n\n{_table(['field', 'value'], rows)}"


def _sentence_transformers_card(folder: Path) -> ModelCard | None:
    path = folder / "README.md"
    if not path.is_file():
        return None
    try:
        return ModelCard(path.read_text(errors="replace"))
    except ValueError:
        return None


def _kind_phrase(kind: str) -> str:
    return {"embedder": "An embedding model (bi-encoder)", "reranker": "A reranker (cross-encoder)"}.get(kind, kind)


def demote_headings(markdown: str) -> str:
    """Headings two levels down (outside code fences), so an embedded card sits under one of this card's sections."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        lines.append("##" + line if not fenced and line.startswith("#") else line)
    return "\n".join(lines)


def build_model_card(session: Session, row: Model, folder: Path, folder_name: str) -> str:
    """The README.md of a downloaded model: Retune's record of it, then sentence-transformers' own card."""
    st_card = _sentence_transformers_card(folder)
    data = st_card.data if st_card is not None else ModelCardData(library_name="sentence-transformers")
    job = session.get(Job, row.job_id) if row.job_id else None
    dataset = session.get(Dataset, job.dataset_id) if job else None
    data.base_model = row.base_model or None
    data.tags = sorted(set(data.tags or []) | {"retune", "sentence-transformers", row.kind})
    if dataset is not None:
        data.datasets = [dataset.name]
    sections = [
        f"# {row.name}\n\n{_kind_phrase(row.kind)} "
        + ("fine-tuned by Retune." if job else f"registered in Retune ({row.source})."),
        _table(["field", "value"], [("model id", row.id), ("kind", row.kind), ("base model", row.base_model),
                                    ("source", row.source), ("uploaded file", row.file_name), ("job", row.job_id),
                                    ("created", row.created_at)]),
    ]  # fmt: skip
    if job is not None:
        points = list(session.scalars(select(MetricPoint).where(MetricPoint.job_id == job.id)))
        sections += [
            dataset_section(dataset),
            params_section(job),
            evaluation_section(points, job.params.get("select_metric", "ndcg@10")),
            verdict_section(row),
            loss_section(points),
        ]
    if (calibration := calibration_section(folder)) is not None:
        sections.append(calibration)
    sections += [versions_section(folder), usage_section(row.kind, folder_name)]
    if st_card is not None and st_card.text.strip():
        sections.append("## Card written by sentence-transformers\n\n" + demote_headings(st_card.text.strip()))
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
