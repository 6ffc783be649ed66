"""Model archives are streamed (and stop when the reader does); the card's tables follow the stored metrics."""

from __future__ import annotations

import io
import random
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from app.db.tables import MetricPoint
from app.services.model_archive import stream_model_archive
from app.services.model_card import chosen_step, demote_headings, evaluation_section, loss_section


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "1_Pooling" / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(5_000_000))  # incompressible: 5 chunks
    (folder / "README.md").write_text("the card sentence-transformers wrote")
    return folder


@pytest.mark.parametrize("archive_format", ["tar.gz", "zip"])
def test_archive_holds_the_folder_and_the_generated_card(tmp_path: Path, archive_format: str) -> None:
    folder = _folder(tmp_path)
    chunks = list(stream_model_archive(folder, "mine", "# generated", archive_format))
    assert len(chunks) > 1  # sent in pieces, not as one buffer
    data = b"".join(chunks)
    if archive_format == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    assert members == {
        "mine/README.md": b"# generated",
        "mine/1_Pooling/config.json": b"{}",
        "mine/config.json": b'{"model_type": "bert"}',
        "mine/model.safetensors": (folder / "model.safetensors").read_bytes(),
    }


def test_a_reader_that_stops_stops_the_writer(tmp_path: Path) -> None:
    before = threading.active_count()
    stream = stream_model_archive(_folder(tmp_path), "mine", "card", "zip")
    next(stream)
    stream.close()  # what the server does when the client disconnects
    assert threading.active_count() == before


def _point(step: int, name: str, value: float, split: str, ident: int) -> MetricPoint:
    return MetricPoint(id=ident, job_id="j", step=step, epoch=step / 10, name=name, value=value, split=split)


def test_evaluation_table_covers_every_stored_split_and_the_kept_step() -> None:
    points = [
        _point(0, "ndcg@10", 0.50, "validation", 1),
        _point(0, "ndcg@10", 0.40, "test", 2),
        _point(5, "ndcg@10", 0.60, "validation", 3),
        _point(5, "ndcg@10", 0.45, "test", 4),
        _point(10, "ndcg@10", 0.60, "validation", 5),  # a tie: the first maximum is kept
        _point(10, "ndcg@10", 0.47, "test", 6),
        _point(5, "loss", 1.5, "train", 7),
        _point(10, "loss", 1.1, "train", 8),
    ]
    assert chosen_step(points, "ndcg@10") == ("validation", 5)  # selected on validation, first maximum
    table = evaluation_section(points, "ndcg@10")
    assert "this model (step 5)" in table
    assert "| test | ndcg@10 | 0.4000 | 0.4500 | 0.0500 |" in table
    assert "| validation | ndcg@10 | 0.5000 | 0.6000 | 0.1000 |" in table
    assert "loss" not in table
    assert "| 10 | 1.0000 | 1.1000 |" in loss_section(points)


def test_a_fusing_reranker_keeps_its_best_fused_step() -> None:
    points = [
        _point(0, "ndcg@10", 0.3, "test/first_stage", 1),
        _point(4, "ndcg@10", 0.6, "test", 2),
        _point(8, "ndcg@10", 0.5, "test", 3),
        _point(4, "ndcg@10", 0.4, "test/fused", 4),
        _point(8, "ndcg@10", 0.7, "test/fused", 5),
    ]
    assert chosen_step(points, "ndcg@10") == ("test/fused", 8)
    assert "| test/first_stage | ndcg@10 | 0.3000 |" in evaluation_section(points, "ndcg@10")


def test_embedded_card_headings_go_down_outside_code() -> None:
    assert demote_headings("# Title\n```python\n# a comment\n```\n## Usage") == (
        "### Title\n```python\n# a comment\n```\n#### Usage"
    )
