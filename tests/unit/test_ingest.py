"""Unit tests for app.ingest: parsers, archive safety, stored layout, against real data and small slices."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from app.ingest import (
    DatasetFormatError,
    DatasetTooLargeError,
    Document,
    ParseLimits,
    RetrievalSet,
    TrainingExample,
    extract_archive,
    find_beir_root,
    parse_beir_dir,
    parse_training_jsonl,
    read_retrieval_set,
    read_training_examples,
    training_examples_to_retrieval_set,
    write_retrieval_set,
    write_training_examples,
)
from app.ingest import archive as archive_module
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
LIMITS = ParseLimits()

needs_data = pytest.mark.usefixtures("shared_data")  # fails under CI=true when the data is missing


# ---------------------------------------------------------------- helpers


def write_lines(path: Path, lines: list[Any], *, raw: bool = False) -> Path:
    """Write JSONL (objects are dumped, strings written verbatim when raw=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((line if raw else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def make_beir(
    root: Path,
    corpus: list[dict[str, Any]] | None = None,
    queries: list[dict[str, Any]] | None = None,
    qrels: dict[str, str] | None = None,
) -> Path:
    """A small valid BEIR folder; pass a piece to replace it."""
    if corpus is None:
        corpus = [
            {"_id": "d1", "title": "Alpha", "text": "alpha text"},
            {"_id": "d2", "title": "", "text": "beta text"},
            {"_id": "d3", "text": "gamma text", "metadata": {"x": 1}},
        ]
    if queries is None:
        queries = [{"_id": "q1", "text": "what is alpha"}, {"_id": "q2", "text": "beta?", "metadata": {}}]
    if qrels is None:
        qrels = {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"}
    write_lines(root / "corpus.jsonl", corpus)
    write_lines(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for split, text in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_bytes(text.encode("utf-8"))
    return root


def assert_error(
    exc_info: pytest.ExceptionInfo[DatasetFormatError],
    file: str,
    line: int | None,
    field: str | None,
    *,
    too_large: bool = False,
) -> None:
    err = exc_info.value
    assert (err.file, err.line, err.field) == (file, line, field), str(err)
    assert isinstance(err, DatasetTooLargeError) is too_large, type(err)
    assert str(err).startswith(file)


def zip_from(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ---------------------------------------------------------------- errors


def test_error_message_and_pickle() -> None:
    err = DatasetFormatError("train.jsonl", "expected a list of strings", line=3, field="pos")
    assert str(err) == "train.jsonl, line 3, field 'pos': expected a list of strings"
    assert str(DatasetFormatError("train.jsonl", "file contains no training examples")) == (
        "train.jsonl: file contains no training examples"
    )
    big = DatasetTooLargeError("data.zip", "too big", member="a/b.jsonl")
    assert str(big) == "data.zip, member 'a/b.jsonl': too big"
    assert isinstance(big, DatasetFormatError) and isinstance(big, ValueError)
    # Celery ships exceptions between processes: attributes must survive pickling.
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.file, copy.line, copy.field, copy.reason) == ("train.jsonl", 3, "pos", err.reason)
    assert err.as_dict()["message"] == str(err)


# ---------------------------------------------------------------- real data


@needs_data
def test_real_scifact_parses_with_official_counts() -> None:
    rs = parse_beir_dir(DATA / "scifact", LIMITS)
    assert b"\r\n" in (DATA / "scifact" / "qrels" / "test.tsv").read_bytes()  # the CRLF case is real
    stats = rs.stats()
    assert stats["docs"] == 5183
    assert stats["queries"] == 1109
    assert stats["qrels"] == {"train": {"queries": 809, "pairs": 919}, "test": {"queries": 300, "pairs": 339}}
    assert stats["grades"] == [1]
    assert all("\r" not in did for judged in rs.qrels["test"].values() for did in judged)
    doc = rs.corpus["4983"]
    assert doc.title.startswith("Microstructural development of human newborn")
    assert doc.text


@needs_data
def test_real_cranfield_grades_match_independent_read() -> None:
    with (DATA / "cranfield" / "qrels" / "all.tsv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    expected_grades = sorted({int(row[2]) for row in rows})
    expected_queries = len({row[0] for row in rows})
    rs = parse_beir_dir(DATA / "cranfield", LIMITS)
    stats = rs.stats()
    assert stats["grades"] == expected_grades
    assert stats["qrels"] == {"all": {"queries": expected_queries, "pairs": len(rows)}}
    assert max(expected_grades) == 4
    for qid, did, grade in rows[:50]:
        assert rs.qrels["all"][qid][did] == int(grade)


# ---------------------------------------------------------------- archives + find_beir_root


def _scifact_slice(root: Path, n_rows: int = 15) -> RetrievalSet:
    """Write a small BEIR slice of SciFact under root (CRLF qrels as in the original)."""
    full_rows = (DATA / "scifact" / "qrels" / "test.tsv").read_bytes().decode().split("\r\n")
    rows = [r.split("\t") for r in full_rows[1 : 1 + n_rows]]
    qids = {r[0] for r in rows}
    dids = {r[1] for r in rows}
    corpus = [
        json.loads(line)
        for line in (DATA / "scifact" / "corpus.jsonl").read_text().splitlines()
        if json.loads(line)["_id"] in dids
    ]
    queries = [
        json.loads(line)
        for line in (DATA / "scifact" / "queries.jsonl").read_text().splitlines()
        if json.loads(line)["_id"] in qids
    ]
    qrels_text = "\r\n".join([full_rows[0], *full_rows[1 : 1 + n_rows]]) + "\r\n"
    make_beir(root, corpus, queries, {"test": qrels_text})
    expected_qrels: dict[str, dict[str, int]] = {}
    for qid, did, score in rows:
        expected_qrels.setdefault(qid, {})[did] = int(score)
    return RetrievalSet(
        corpus={d["_id"]: Document(d["_id"], d["title"], d["text"]) for d in corpus},
        queries={q["_id"]: q["text"] for q in queries},
        qrels={"test": expected_qrels},
    )


@needs_data
def test_zip_of_folder_round_trips(tmp_path: Path) -> None:
    expected = _scifact_slice(tmp_path / "src" / "scifact")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((tmp_path / "src").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "src").as_posix())
        # macOS Finder junk, including a decoy corpus.jsonl, must be ignored.
        zf.writestr("__MACOSX/scifact/._corpus.jsonl", b"\x00\x05junk")
        zf.writestr("__MACOSX/scifact/corpus.jsonl", b"junk")
    dest = tmp_path / "out"
    extract_archive(archive, "my set.zip", dest, LIMITS)
    root = find_beir_root(dest)
    assert root == dest / "scifact"
    rs = parse_beir_dir(root, LIMITS)
    assert rs == expected
    assert rs.stats()["qrels"]["test"]["pairs"] == 15


def test_tar_gz_round_trips_and_top_level_root(tmp_path: Path) -> None:
    src = make_beir(tmp_path / "src")
    archive = tmp_path / "set.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        for path in sorted(src.rglob("*")):
            tf.add(path, arcname="./" + path.relative_to(src).as_posix(), recursive=False)
    dest = tmp_path / "out"
    extract_archive(archive, "set.tgz", dest, LIMITS)
    assert find_beir_root(dest) == dest
    assert parse_beir_dir(dest, LIMITS) == parse_beir_dir(src, LIMITS)


def test_find_beir_root_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="not found"):
        find_beir_root(tmp_path / "empty")
    make_beir(tmp_path / "two" / "a")
    make_beir(tmp_path / "two" / "b")
    with pytest.raises(DatasetFormatError, match="2 folders"):
        find_beir_root(tmp_path / "two")


def test_zip_with_parent_component_is_refused(tmp_path: Path) -> None:
    archive = zip_from(tmp_path / "evil.zip", {"ok/corpus.jsonl": b"{}", "../evil": b"boom"})
    with pytest.raises(DatasetFormatError) as exc_info:
        extract_archive(archive, "evil.zip", tmp_path / "out", LIMITS)
    assert_error(exc_info, "evil.zip", None, None)
    assert exc_info.value.member == "../evil"
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out" / "ok").exists()  # nothing written before all members were checked


@pytest.mark.parametrize("name", ["/etc/evil.txt", "C:\\evil.txt", "ok\\..\\..\\evil.txt"])
def test_zip_with_absolute_or_escaping_path_is_refused(tmp_path: Path, name: str) -> None:
    archive = zip_from(tmp_path / "abs.zip", {"fine.txt": b"ok", name: b"boom"})
    with pytest.raises(DatasetFormatError) as exc_info:
        extract_archive(archive, "abs.zip", tmp_path / "out", LIMITS)
    assert_error(exc_info, "abs.zip", None, None)
    assert exc_info.value.member == name


def test_zip_bomb_declared_size_over_limit(tmp_path: Path) -> None:
    archive = zip_from(tmp_path / "bomb.zip", {"a.txt": b"0" * 300_000, "b.txt": b"0" * 300_000})
    assert archive.stat().st_size < 10_000  # compresses to almost nothing
    with pytest.raises(DatasetTooLargeError) as exc_info:
        extract_archive(archive, "bomb.zip", tmp_path / "out", ParseLimits(max_bytes=500_000))
    assert_error(exc_info, "bomb.zip", None, None, too_large=True)
    assert exc_info.value.member == "b.txt"
    assert not (tmp_path / "out" / "a.txt").exists()


def test_bytes_are_counted_while_extracting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate headers that under-report (declared check disabled): the streaming count must still stop it.
    monkeypatch.setattr(archive_module, "_check_totals", lambda *args: None)
    archive = zip_from(tmp_path / "bomb.zip", {"a.txt": b"0" * 300_000, "b.txt": b"0" * 300_000})
    with pytest.raises(DatasetTooLargeError) as exc_info:
        extract_archive(archive, "bomb.zip", tmp_path / "out", ParseLimits(max_bytes=500_000))
    assert exc_info.value.member == "b.txt"


def test_too_many_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBERS", 5)
    archive = zip_from(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(6)})
    with pytest.raises(DatasetTooLargeError) as exc_info:
        extract_archive(archive, "many.zip", tmp_path / "out", LIMITS)
    assert_error(exc_info, "many.zip", None, None, too_large=True)
    assert exc_info.value.member == "f5.txt"


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("set/readme.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("set/corpus.jsonl")
        link.type = kind
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DatasetFormatError) as exc_info:
        extract_archive(archive, "links.tar.gz", tmp_path / "out", LIMITS)
    assert_error(exc_info, "links.tar.gz", None, None)
    assert exc_info.value.member == "set/corpus.jsonl"


def test_tar_with_parent_component_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("a/../../evil")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(DatasetFormatError, match=r"'\.\.'") as exc_info:
        extract_archive(archive, "evil.tar", tmp_path / "out", LIMITS)
    assert exc_info.value.member == "a/../../evil"


@pytest.mark.parametrize("label", ["broken.zip", "broken.tar.gz", "broken.tgz"])
def test_corrupt_archive(tmp_path: Path, label: str) -> None:
    archive = tmp_path / "upload.bin"
    archive.write_bytes(b"PK\x03\x04 this is not really an archive" * 10)
    with pytest.raises(DatasetFormatError) as exc_info:
        extract_archive(archive, label, tmp_path / "out", LIMITS)
    assert_error(exc_info, label, None, None)
    assert "corrupt" in exc_info.value.reason


def test_unsupported_archive_type(tmp_path: Path) -> None:
    archive = tmp_path / "x.rar"
    archive.write_bytes(b"Rar!")
    with pytest.raises(DatasetFormatError, match="unsupported archive type"):
        extract_archive(archive, "x.rar", tmp_path / "out", LIMITS)


# ---------------------------------------------------------------- training JSONL


def test_training_jsonl_valid_with_bom_crlf_blank_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"query": "q one", "pos": ["p1"], "neg": ["n1", "n2"], "extra": {"ignored": True}}),
        "",
        json.dumps({"query": "q two", "pos": ["p2", "p3"], "pos_scores": [0.9, 1], "prompt": "Represent: "}),
        "   ",
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    examples = parse_training_jsonl(path, "train.jsonl", LIMITS)
    assert examples == [
        TrainingExample(query="q one", pos=["p1"], neg=["n1", "n2"]),
        TrainingExample(query="q two", pos=["p2", "p3"], neg=[], pos_scores=[0.9, 1.0], prompt="Represent: "),
    ]


TRAIN_CASES = [
    # (id, lines (str = raw line), line, field, too_large, reason fragment)
    (
        "not_json",
        [{"query": "a", "pos": ["b"]}, '{"query": "a", "pos": ["b"'],
        2,
        None,
        False,
        "not valid JSON",
    ),
    ("not_object", [["a", "b"]], 1, None, False, "JSON object"),
    ("missing_query", [{"pos": ["b"], "neg": []}], 1, "query", False, "missing"),
    ("query_not_str", [{"query": 5, "pos": ["b"]}], 1, "query", False, "expected a string"),
    ("query_empty", [{"query": "  ", "pos": ["b"]}], 1, "query", False, "empty"),
    ("missing_pos", [{"query": "a", "neg": ["c"]}], 1, "pos", False, "missing"),
    ("pos_not_list", [{"query": "a", "pos": "b"}], 1, "pos", False, "expected a list of strings"),
    ("pos_empty", [{"query": "a", "pos": []}], 1, "pos", False, "empty list"),
    ("pos_item_not_str", [{"query": "a", "pos": ["b", 3]}], 1, "pos", False, "item 1"),
    ("neg_item_empty", [{"query": "a", "pos": ["b"], "neg": [""]}], 1, "neg", False, "empty"),
    (
        "pos_scores_length",
        [{"query": "a", "pos": ["b"]}, {"query": "a", "pos": ["b", "c"], "pos_scores": [1.0]}],
        2,
        "pos_scores",
        False,
        "lengths must match",
    ),
    (
        "neg_scores_length",
        [{"query": "a", "pos": ["b"], "neg": ["c"], "neg_scores": [0.1, 0.2]}],
        1,
        "neg_scores",
        False,
        "lengths must match",
    ),
    (
        "scores_not_numbers",
        [{"query": "a", "pos": ["b"], "pos_scores": ["1"]}],
        1,
        "pos_scores",
        False,
        "numbers",
    ),
    ("prompt_not_str", [{"query": "a", "pos": ["b"], "prompt": 1}], 1, "prompt", False, "expected a string"),
    (
        "text_too_long",
        [{"query": "a", "pos": ["b"]}, {"query": "a", "pos": ["x" * 51]}],
        2,
        "pos",
        True,
        "limit",
    ),
    ("too_many_items", [{"query": "a", "pos": ["b"], "neg": ["n"] * 6}], 1, "neg", True, "limit"),
    ("too_many_lines", [{"query": "a", "pos": ["b"]}] * 4, 4, None, True, "more than 3 lines"),
]


@pytest.mark.parametrize(
    ("lines", "line", "field", "too_large", "fragment"),
    [case[1:] for case in TRAIN_CASES],
    ids=[case[0] for case in TRAIN_CASES],
)
def test_training_jsonl_errors(
    tmp_path: Path,
    lines: list[Any],
    line: int,
    field: str | None,
    too_large: bool,
    fragment: str,
) -> None:
    path = tmp_path / "upload.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    limits = ParseLimits(max_lines=3, max_text_chars=50, max_list_items=5)
    with pytest.raises(DatasetFormatError) as exc_info:
        parse_training_jsonl(path, "train.jsonl", limits)
    assert_error(exc_info, "train.jsonl", line, field, too_large=too_large)
    assert fragment in exc_info.value.reason


def test_training_jsonl_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\r\n\n  \n")
    with pytest.raises(DatasetFormatError) as exc_info:
        parse_training_jsonl(path, "train.jsonl", LIMITS)
    assert_error(exc_info, "train.jsonl", None, None)


def test_training_jsonl_not_utf8_and_too_big(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps({"query": "a", "pos": ["b"]}).encode() + b'\n{"query": "\xff"}\n')
    with pytest.raises(DatasetFormatError) as exc_info:
        parse_training_jsonl(path, "train.jsonl", LIMITS)
    assert_error(exc_info, "train.jsonl", 2, None)
    assert "UTF-8" in exc_info.value.reason
    with pytest.raises(DatasetTooLargeError) as big:
        parse_training_jsonl(path, "train.jsonl", ParseLimits(max_bytes=10))
    assert_error(big, "train.jsonl", None, None, too_large=True)


# ---------------------------------------------------------------- BEIR folders


def test_beir_small_valid_set(tmp_path: Path) -> None:
    root = make_beir(
        tmp_path,
        corpus=[{"_id": 7, "title": None, "text": "seven"}, {"_id": "8", "text": "eight"}],
        queries=[{"_id": 1, "text": "one"}],
        qrels={"dev": "1\t7\t-1\n1\t8\t3\n", "test": "query-id\tcorpus-id\tscore\r\n1\t8\t1\r\n"},
    )
    rs = parse_beir_dir(root, LIMITS)
    assert rs.corpus == {"7": Document("7", "", "seven"), "8": Document("8", "", "eight")}
    assert rs.queries == {"1": "one"}
    assert rs.qrels == {"dev": {"1": {"7": -1, "8": 3}}, "test": {"1": {"8": 1}}}
    assert rs.stats() == {
        "docs": 2,
        "queries": 1,
        "qrels": {"dev": {"queries": 1, "pairs": 2}, "test": {"queries": 1, "pairs": 1}},
        "grades": [-1, 1, 3],
    }


QRELS_HEADER = "query-id\tcorpus-id\tscore\n"
BEIR_CASES: list[tuple[str, dict[str, Any], str, int | None, str | None, str]] = [
    (
        "unknown_corpus_id",
        {"qrels": {"test": QRELS_HEADER + "q1\td1\t1\nq1\td9\t1\n"}},
        "qrels/test.tsv",
        3,
        "corpus-id",
        "'d9'",
    ),
    (
        "unknown_query_id",
        {"qrels": {"test": "q1\td1\t1\nq7\td1\t1\n"}},
        "qrels/test.tsv",
        2,
        "query-id",
        "'q7'",
    ),
    (
        "non_integer_score",
        {"qrels": {"dev": QRELS_HEADER + "q1\td1\t1.5\n"}},
        "qrels/dev.tsv",
        2,
        "score",
        "integer",
    ),
    (
        "two_columns",
        {"qrels": {"test": QRELS_HEADER + "q1 d1 1\n"}},
        "qrels/test.tsv",
        2,
        None,
        "3 tab-separated",
    ),
    (
        "conflicting_pair",
        {"qrels": {"test": "q1\td1\t1\nq1\td1\t2\n"}},
        "qrels/test.tsv",
        2,
        "score",
        "already",
    ),
    ("empty_qrels", {"qrels": {"test": QRELS_HEADER}}, "qrels/test.tsv", None, None, "no judged pairs"),
    (
        "duplicate_doc_id",
        {"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]},
        "corpus.jsonl",
        2,
        "_id",
        "first seen on line 1",
    ),
    (
        "duplicate_query_id",
        {"queries": [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}]},
        "queries.jsonl",
        2,
        "_id",
        "duplicate",
    ),
    ("missing_doc_id", {"corpus": [{"title": "t", "text": "a"}]}, "corpus.jsonl", 1, "_id", "missing"),
    ("doc_text_not_str", {"corpus": [{"_id": "d1", "text": ["a"]}]}, "corpus.jsonl", 1, "text", "a list"),
    ("query_text_missing", {"queries": [{"_id": "q1"}]}, "queries.jsonl", 1, "text", "missing"),
    ("float_id", {"queries": [{"_id": 1.5, "text": "a"}]}, "queries.jsonl", 1, "_id", "string or integer"),
    (
        "bad_json",
        {"corpus": ['{"_id": "d1", "text": "a"}', "{nope"]},
        "corpus.jsonl",
        2,
        None,
        "not valid JSON",
    ),
    ("empty_corpus", {"corpus": []}, "corpus.jsonl", None, None, "no documents"),
]


@pytest.mark.parametrize(
    ("pieces", "file", "line", "field", "fragment"),
    [case[1:] for case in BEIR_CASES],
    ids=[case[0] for case in BEIR_CASES],
)
def test_beir_errors(
    tmp_path: Path, pieces: dict[str, Any], file: str, line: int | None, field: str | None, fragment: str
) -> None:
    corpus = pieces.get("corpus")
    if corpus is not None and any(isinstance(x, str) for x in corpus):
        root = make_beir(tmp_path)
        write_lines(root / "corpus.jsonl", corpus, raw=True)
    else:
        root = make_beir(tmp_path, corpus, pieces.get("queries"), pieces.get("qrels"))
    with pytest.raises(DatasetFormatError) as exc_info:
        parse_beir_dir(root, LIMITS)
    assert_error(exc_info, file, line, field)
    assert fragment in exc_info.value.reason


def test_beir_missing_files(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "a")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DatasetFormatError) as exc_info:
        parse_beir_dir(root, LIMITS)
    assert_error(exc_info, "corpus.jsonl", None, None)
    assert "missing" in exc_info.value.reason

    root = make_beir(tmp_path / "b")
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(DatasetFormatError, match="qrels"):
        parse_beir_dir(root, LIMITS)


def test_beir_limits(tmp_path: Path) -> None:
    root = make_beir(tmp_path, corpus=[{"_id": "d1", "text": "x" * 100}, {"_id": "d2", "text": "y"}])
    with pytest.raises(DatasetTooLargeError) as exc_info:
        parse_beir_dir(root, ParseLimits(max_text_chars=99))
    assert_error(exc_info, "corpus.jsonl", 1, "text", too_large=True)
    with pytest.raises(DatasetTooLargeError) as lines_info:
        parse_beir_dir(root, ParseLimits(max_lines=3))
    assert_error(lines_info, "qrels/test.tsv", 4, None, too_large=True)


# ---------------------------------------------------------------- store


def test_retrieval_set_store_round_trip(tmp_path: Path) -> None:
    rs = parse_beir_dir(make_beir(tmp_path / "src"), LIMITS)
    rs.corpus["d4"] = Document("d4", 'Title "quoted"', "line\nbreak \u2028 and unicode é")
    write_retrieval_set(rs, tmp_path / "stored")
    qrels_bytes = (tmp_path / "stored" / "qrels" / "test.tsv").read_bytes()
    assert qrels_bytes.startswith(b"query-id\tcorpus-id\tscore\n") and b"\r" not in qrels_bytes
    assert len((tmp_path / "stored" / "corpus.jsonl").read_bytes().splitlines()) == 4
    back = read_retrieval_set(tmp_path / "stored")
    assert back == rs
    assert not list((tmp_path / "stored").rglob(".*.tmp"))


def test_training_examples_store_round_trip(tmp_path: Path) -> None:
    examples = [
        TrainingExample("q1", ["p1", "p2"], ["n1"], pos_scores=[1.0, 0.5], neg_scores=[0.1], prompt="P: "),
        TrainingExample("q2 é", ["p3"], []),
    ]
    write_training_examples(examples, tmp_path)
    assert (tmp_path / "train.jsonl").is_file()
    assert "pos_scores" not in (tmp_path / "train.jsonl").read_text().splitlines()[1]
    assert read_training_examples(tmp_path) == examples


def test_training_examples_to_retrieval_set(tmp_path: Path) -> None:
    def sha(prefix: str, text: str) -> str:
        return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    examples = [
        TrainingExample("what is a cat", ["cats purr"], ["dogs bark"]),
        TrainingExample("what is a dog", ["dogs bark"], ["cats purr", "fish swim"]),
        TrainingExample("what is a cat", ["cats meow", "cats purr"], []),
    ]
    rs = training_examples_to_retrieval_set(examples)
    assert set(rs.queries) == {sha("q", "what is a cat"), sha("q", "what is a dog")}
    assert rs.queries[sha("q", "what is a cat")] == "what is a cat"
    assert set(rs.corpus) == {sha("d", t) for t in ("cats purr", "dogs bark", "fish swim", "cats meow")}
    assert rs.corpus[sha("d", "fish swim")] == Document(sha("d", "fish swim"), "", "fish swim")
    assert rs.qrels == {
        "train": {
            sha("q", "what is a cat"): {sha("d", "cats purr"): 1, sha("d", "cats meow"): 1},
            sha("q", "what is a dog"): {sha("d", "dogs bark"): 1},
        }
    }
    assert rs.stats()["qrels"] == {"train": {"queries": 2, "pairs": 3}}
    # Stable: same ids from a fresh call, and the set survives the store.
    assert training_examples_to_retrieval_set(list(reversed(examples))) == rs
    write_retrieval_set(rs, tmp_path)
    assert read_retrieval_set(tmp_path) == rs
