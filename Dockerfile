# Retune: one image for the API and the Celery worker.
#
#   CPU (api, default):  docker build -t retune:cpu .
#   CUDA (gpu worker):   docker build -t retune:cuda \
#                          --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# api:    python -m app.cli serve --no-worker   (the default CMD)
# worker: python -m app.cli worker
# Both migrate the database (Alembic) before they start.
FROM python:3.11-slim

# torch comes first and explicitly, from the index that picks its build (CPU or CUDA).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app

# Dependencies in their own layer: install the project with empty packages so that a code change
# does not reinstall transformers, faiss, ... ; the real code is installed over it below.
COPY pyproject.toml README.md ./
RUN mkdir -p app worker \
    && touch app/__init__.py worker/__init__.py \
    && pip install . \
    && pip uninstall -y retune \
    && rm -rf app worker build *.egg-info

COPY alembic.ini ./
COPY migrations/ ./migrations/
COPY worker/ ./worker/
COPY app/ ./app/
RUN pip install --no-deps . \
    && rm -rf build *.egg-info

# The source tree in /app comes first on sys.path: migrations are found next to alembic.ini.
ENV PYTHONPATH=/app \
    RETUNE_DATA_DIR=/data \
    RETUNE_HOST=0.0.0.0 \
    RETUNE_PORT=8000 \
    HF_HOME=/data/cache/huggingface

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/retune retune \
    && mkdir -p /data \
    && chown retune:retune /data
USER retune

VOLUME ["/data"]
EXPOSE 8000

# slim has no curl; /health also checks the database connection.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RETUNE_PORT', '8000'), timeout=5)" || exit 1

CMD ["python", "-m", "app.cli", "serve", "--no-worker"]
