#!/usr/bin/env bash
# The GPU checks, as one call on a lent GPU machine (its own python3 with CUDA torch; data/prepared/ml-1m carried):
# the CUDA cases of the device-parametrized tests (`pytest -m cuda`), the training-throughput grid in bf16 and fp32
# up to d_model=1024 (MFU against the card's matmul peak measured in the same run), then SASRec-size training runs
# on CUDA with precision `auto` (bf16) and their test metrics: the quality configuration of bench/README.md (full softmax,
# 1e14 FLOPs) and the sampled objective (K=128, 3e13 FLOPs) with uniform and with popularity negatives; last, the
# sampled CE's routes side by side (bench/sampled_ce_routes.py: do the CPU's route rules hold on this GPU?).
# Logs go to $OUT (or results/gpu).
# Usage: bash bench/gpu_check.sh [grid seconds] [full-softmax run seconds] [each sampled run seconds] [routes seconds]
set -uo pipefail
export PYTHONPATH=src:bench PYTHONUNBUFFERED=1
out=${OUT:-results/gpu}
runs=$(mktemp -d)  # run folders stay out of $OUT (its files come back; the logs hold the figures)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_fused_ce.py tests/test_negatives.py tests/test_model.py \
  tests/test_train.py 2>&1 | tail -15 | tee -a "$out/gpu.txt"
timeout "${1:-300}" python3 bench/train_throughput.py --d-models 1024,256,64 --batch-size 128 --steps 6 \
  2>&1 | tee "$out/throughput.log"
sasrec="model.embedder=id model.d_model=64 model.n_layers=2 model.n_heads=2 model.d_ff=256 model.max_len=200
  model.dropout=0.2 train.lr=1e-3 train.batch_size=128 train.n_evals=0 train.warmup_frac=0.01 data.exclude_seen=true"
# shellcheck disable=SC2086
timeout "${2:-150}" python3 -m bfmscale run --out "$runs/full" $sasrec train.objective=full train.flops=1e14 \
  2>&1 | tee "$out/run.log"
for sampler in uniform popularity; do
  # shellcheck disable=SC2086
  timeout "${3:-100}" python3 -m bfmscale run --out "$runs/$sampler" $sasrec train.objective=sampled \
    train.n_negatives=128 train.sampler=$sampler train.flops=3e13 2>&1 | tee "$out/run-sampled-$sampler.log"
done
timeout "${4:-100}" python3 bench/sampled_ce_routes.py --device cuda --targets 25600 --d-models 64,256,1024 \
  --negatives 128,1024 2>&1 | tee "$out/sampled_ce_routes.log"
