"""The compatible routes' pieces that need no running service: error shapes, input checks, vector encoding,
and the untrained-head guard on the shared loader every rerank route goes through."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64

import numpy as np
import pytest

from app.api.compat_errors import family, shaped
from app.api.routes.openai_compat import encoded, texts_of
from app.core.config import Settings
from app.core.errors import InputTooLargeError, InvalidRequestError, TokenIdsInputError, UntrainedHeadError
from app.db.tables import Model
from app.services import compat, serving


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/embeddings", "openai"),
        ("/v1/models", "openai"),
        ("/v1/rerank", "cohere"),
        ("/v2/rerank", "cohere"),
        ("/tei/m/embed", "tei"),
        ("/search", None),
        ("/models", None),
    ],
)
def test_paths_map_to_their_route_family(path: str, expected: str | None) -> None:
    assert family(path) == expected


def test_error_shapes_are_each_apis_own() -> None:
    assert shaped("openai", 401, "bad key") == {
        "error": {"message": "bad key", "type": "authentication_error", "param": None, "code": None}
    }
    assert shaped("openai", 404, "model 'x' not found")["error"]["code"] == "model_not_found"
    assert shaped("cohere", 422, "no") == {"message": "no"}
    assert shaped("tei", 413, "long") == {"error": "long", "error_type": "validation"}
    assert shaped("tei", 403, "scope")["error_type"] == "unauthorized"


def test_token_ids_are_refused_with_the_langchain_hint() -> None:
    assert texts_of("one") == ["one"]
    assert texts_of(["a", "b"]) == ["a", "b"]
    for ids in ([1, 2, 3], [[1, 2], [3]]):
        with pytest.raises(TokenIdsInputError, match="check_embedding_ctx_length=False"):
            texts_of(ids)


def test_base64_is_little_endian_float32() -> None:
    vector = np.array([0.5, -1.25, 3.0e-7], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(encoded(vector, "base64")), dtype="<f4")
    assert decoded.tolist() == vector.tolist()
    assert encoded(vector, "float") == vector.tolist()


def test_text_bounds_name_what_is_over() -> None:
    settings = Settings(max_text_chars=10)
    with pytest.raises(InvalidRequestError, match="empty"):
        compat.check_texts(settings, [], 3, "input")
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is empty"):
        compat.check_texts(settings, ["a", "  "], 3, "input")
    with pytest.raises(InputTooLargeError, match="at most 3"):
        compat.check_texts(settings, ["a"] * 4, 3, "input")
    with pytest.raises(InputTooLargeError, match="11 characters; at most 10"):
        compat.check_texts(settings, ["x" * 11], 3, "input")


def test_dimensions_keep_the_first_components_renormalised() -> None:
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32) / 13
    cut = compat.shorten(vectors, 2, normalize=True)
    assert cut[0].tolist() == pytest.approx([0.6, 0.8])
    with pytest.raises(InvalidRequestError, match="dimensions"):
        compat.shorten(vectors, 4, normalize=True)


def test_untrained_head_is_refused_by_the_shared_loader() -> None:
    """Every rerank route loads through serving.reranker: a reranker row whose folder has no trained head
    (the bundled embedding model) is refused before any score is computed."""
    row = Model(id="untrained", name="untrained", kind="reranker", source="bundled", path="bundled:x", config={})
    with pytest.raises(UntrainedHeadError, match="never trained"):
        serving.reranker(Settings(device="cpu"), row)


def test_one_model_cache_per_process_shared_with_search() -> None:
    """/search and the compat routes call the same loader: the second call returns the first's object."""
    from app.services import search

    row = Model(id="all-MiniLM-L6-v2", name="m", kind="embedder", source="bundled", path="bundled:x", config={})
    settings = Settings(device="cpu")
    first = serving.embedder(settings, row, 256)
    assert serving.embedder(settings, row, 256) is first
    assert search.serving is serving  # search's loading block goes through this module, not a cache of its own
    assert not hasattr(search, "_cache")
