#!/bin/bash
# The benchmarks that need a CUDA GPU, in one run, most needed first; each writes bench/results/<name>.json.
#
#     PYTHON=python3 bash bench/gpu_suite.sh [WORK_DIR]      # not yet run through on a GPU
#
# 1. scifact_embedder_cuda: the default embedder job (precision auto: bf16 AMP on CUDA), kept as the first stage;
# 2. scifact_reranker_cuda: the default reranker job over that embedder's top 100 (issue 19's two-stage figure);
# 3. cranfield_from_scifact_cuda: the default Cranfield job started from that SciFact reranker;
# 4. gpu_serving: embedding and rerank throughput, torch fp32 vs bf16, with the nDCG@10 change;
# 5. train_precision_cuda: fp32 vs bf16 AMP training, triples/s and the paired nDCG@10 change;
# 6. concurrent_serving_cuda: cross-request batching on the GPU.
# Each step has a time limit (seconds sized for a short lease on a large GPU, times TIME_SCALE); one that
# fails or runs out does not stop the next, and a step that needs an earlier one's model fails when that
# model is missing. Set RETUNE_SHARED_DATA when ../shared/data is not there.
set -u
PYTHON=${PYTHON:-.venv/bin/python}
WORK=${1:-$(mktemp -d)}
TIME_SCALE=${TIME_SCALE:-1}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$(date +%s)

step() {
    local limit=$1
    shift
    echo "[$(($(date +%s) - started)) s] start: $*"
    timeout "$((limit * TIME_SCALE))" "$PYTHON" -m "$@"
    echo "[$(($(date +%s) - started)) s] exit $?: $1"
}

step 150 bench.scifact_embedder --keep "$WORK/E" --name scifact_embedder_cuda
step 200 bench.scifact_reranker --candidate-model "$WORK/E" --keep "$WORK/R" --name scifact_reranker_cuda
step 120 bench.cranfield_validated --base-model "$WORK/R" --name cranfield_from_scifact_cuda
step 100 bench.gpu_serving --reranker "$WORK/R"
step 120 bench.train_precision --device cuda --steps 60 --max-train-queries 10000 --max-corpus-docs 0 \
    --max-test-queries 0 --passage-max-len 256 --name train_precision_cuda
step 45 bench.concurrent_serving --device cuda --clients 8 --name concurrent_serving_cuda
