#!/usr/bin/env bash
# The prepared GPU check: the first thing to run whenever a GPU is available (issue 13, item 6/7).
#
#     bash bench/gpu_wheels.sh               # here, with PyPI: .whl/hf and .whl/unsloth (32.6 MiB)
#     bash bench/gpu_check.sh --dry          # here, on CPU: the plan, the folders' sizes, the CLIs
#     bash bench/gpu_check.sh                # on the GPU machine: one command, at most CHECK_LIMIT_S
#
# On the lent device machine (no network; python 3.12, torch 2.11 CUDA 13, transformers 5.17 and
# peft there), from the repository root, as one call:
#     run(command="bash bench/gpu_check.sh", carry=[".whl/hf", ".whl/unsloth"], timeout_s=600)
# (carry only ".whl/hf" to check the hf backend alone: the unsloth steps are then skipped).
#
# What it does, each step under its own time limit, skipping a step when the time left
# (CHECK_LIMIT_S, default 480 s from the start) is too short for it:
#   install    pip install --no-index --no-deps --target $SITE the carried wheels; PYTHONPATH puts the
#              repository's arcttt first, then $SITE
#   model      a random Qwen3-4B-shaped model (bf16, built on the GPU) in the nvarc format when
#              arcttt.formats knows it, else chat (bench/ttt_speed.py --shape qwen3-4b --keep-model)
#   gpu-tests  pytest -m gpu (tests/test_gpu.py: every backend and precision on a small Qwen3)
#   ttt-*      bench/ttt_speed.py at 8192 tokens: bf16 LoRA r=256 with embeddings and 4-bit r=64,
#              each on hf (transformers + peft) and on unsloth: tokens/s, MFU, peak memory
#   search     bench/search_speed.py on that model: 16 views lock-step vs one by one vs generate
#   kvcache    bench/kv_cache.py on that model: decode cost per token on the preallocated cache vs
#              DynamicCache at a 4k prompt x 8 views, and the prefills the shared prompt cache saves
#   plan       arcttt profile --plan on that shape: the memory estimate to set beside the peaks
#   run-*      a 5-task `arcttt run` per backend (kaggle-l4x4 preset, both at once on the one GPU),
#              budget min(300 s, what is left)
# STEPS="gpu-tests ttt search runs" (default: all) picks what runs besides install and model, e.g. the
# runs alone in a second call. Every figure and log goes to $OUT (default ./gpu-check-out): summary.txt and figures.json as the
# steps end, logs.tar.gz (every log, JSON and run folder) at the end; at most 8 files, as the
# device tool returns.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/gpu-check-out}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/arcttt-site}
WORK=${WORK:-/tmp/arcttt-gpu-check}
MODEL=${MODEL:-/tmp/arcttt-qwen3-4b}
LIMIT=${CHECK_LIMIT_S:-480}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}  # dense bf16 of an H100/H200 SXM; an L4: 121
T0=$(date +%s)

left() { echo $((LIMIT - ($(date +%s) - T0))); }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

if [ $DRY = 1 ]; then
    echo "gpu_check --dry: what the check would run (limit ${LIMIT} s), and the carried folders"
else
    mkdir -p "$OUT" "$WORK"
    : >"$OUT/summary.txt"
fi

STEPS=${STEPS:-all}
wanted() { [ "$STEPS" = all ] || [[ " $STEPS " == *" $1 "* ]]; }

step() {  # NAME MIN_S MAX_S COMMAND...: run COMMAND under min(MAX_S, time left), log to $WORK/NAME.log
    local name=$1 need=$2 most=$3
    shift 3
    if [ $DRY = 1 ]; then
        printf '%-16s <= %4s s: %s\n' "$name" "$most" "$*"
        return 0
    fi
    local have
    have=$(left)
    if [ "$have" -lt "$need" ]; then
        echo "$name skipped: ${have} s left, needs ${need}" | tee -a "$OUT/summary.txt"
        return 0
    fi
    local limit=$((most < have ? most : have)) t=$(date +%s) rc
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - t)) s" | tee -a "$OUT/summary.txt"
    tail -n 5 "$WORK/$name.log"
    return $rc
}

# --- the carried folders ---------------------------------------------------------------------------
wheels=()
for folder in hf unsloth; do
    [ -d "$WHL/$folder" ] && wheels+=("$WHL/$folder"/*.whl)
done
if [ $DRY = 1 ]; then
    [ -d "$WHL/hf" ] || { echo "no $WHL/hf: run bash bench/gpu_wheels.sh first"; exit 1; }
    tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    total=$tree
    for folder in hf unsloth; do
        size=$(du -cb "$WHL/$folder"/*.whl 2>/dev/null | tail -1 | cut -f1)
        total=$((total + ${size:-0}))
        printf 'carried %-8s %6.1f MiB (%s wheels)\n' "$folder" "$(mib "${size:-0}")" \
            "$(ls "$WHL/$folder"/*.whl 2>/dev/null | wc -l)"
    done
    printf 'working tree %.1f MiB; with both folders %.1f MiB (limit 64 MiB a call)\n' "$(mib "$tree")" "$(mib "$total")"
    [ "$total" -le $((64 * 1048576)) ] || { echo "FAIL: over 64 MiB: carry the folders in two calls"; exit 1; }
fi

step install 10 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$REPO:$SITE" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
HAS_UNSLOTH=0
[ -d "$WHL/unsloth" ] && HAS_UNSLOTH=1
FORMAT=$("$PY" -c "from arcttt import formats; print('nvarc' if 'nvarc' in formats.FORMATS else 'chat')" 2>/dev/null \
    || echo chat)
[ $DRY = 0 ] && { nvidia-smi; "$PY" -c "import torch, transformers, peft; print(torch.__version__, \
torch.version.cuda, transformers.__version__, peft.__version__)"; } >"$WORK/env.log" 2>&1

step model 60 180 "$PY" bench/ttt_speed.py --shape qwen3-4b --keep-model "$MODEL" --format "$FORMAT" --steps 0
wanted gpu-tests && step gpu-tests 60 240 env ARCTTT_GPU_OUT="$WORK" "$PY" -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_gpu.py

backends=(hf)
[ $HAS_UNSLOTH = 1 ] && backends+=(unsloth)
for b in "${backends[@]}"; do
    wanted ttt || break
    step "ttt-$b-bf16-r256" 40 90 "$PY" bench/ttt_speed.py --model "$MODEL" --backend "$b" --dtype bf16 --rank 256 \
        --train-embeddings --seq-len 8192 --steps 4 --warmup 1 --peak-tflops "$PEAK_TFLOPS" \
        --out "$WORK/ttt-$b-bf16-r256.json"
    step "ttt-$b-4bit-r64" 40 90 "$PY" bench/ttt_speed.py --model "$MODEL" --backend "$b" --dtype bf16 --rank 64 \
        --load-in-4bit --seq-len 8192 --steps 4 --warmup 1 --peak-tflops "$PEAK_TFLOPS" \
        --out "$WORK/ttt-$b-4bit-r64.json"
done
wanted search && step search 60 150 "$PY" bench/search_speed.py --model "$MODEL" --dtype bf16 --tasks 1 --views 16 --max-new 64 \
    --repeat 1 --dfs-seconds 5 --out "$WORK/search.json"
wanted search && step kvcache 30 90 "$PY" bench/kv_cache.py --model "$MODEL" --dtype bf16 --prompt 4096 --views 8 \
    --new 32 --repeat 1 --dfs-seconds 3 --out "$WORK/kvcache.json"

step challenges 5 60 "$PY" -m arcttt data export --split arc-agi-1-eval --out "$WORK/data" --tasks 5
CHALLENGES=$WORK/data/arc-agi_evaluation_challenges.json
step plan 5 60 "$PY" -m arcttt profile --plan --challenges "$CHALLENGES" --config kaggle-l4x4 --model "$MODEL"

# the runs: both backends at once (one GPU holds two 4-bit 4B workers easily), each for whatever is left
budget=$(( $(left) - 45 ))
[ "$budget" -gt 300 ] && budget=300
[ $DRY = 1 ] && budget=300
pids=()
wanted runs || backends=()
for b in "${backends[@]}"; do
    step "run-$b" 60 $((budget + 40)) "$PY" -m arcttt run --challenges "$CHALLENGES" --model "$MODEL" \
        --out "$WORK/run-$b/submission.json" --run-dir "$WORK/run-$b/arcttt-run" --config kaggle-l4x4 \
        --time-budget "$budget" --workers 1 --set "model.backend=$b" --quiet &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # (an empty list expands to nothing)
for b in "${backends[@]}"; do
    step "score-$b" 1 30 "$PY" -m arcttt score "$WORK/run-$b/submission.json" \
        --solutions "$WORK/data/arc-agi_evaluation_solutions.json" --json
    step "profile-$b" 1 30 "$PY" -m arcttt profile "$WORK/run-$b/arcttt-run"
done

[ $DRY = 1 ] && { echo "dry run: nothing was run"; exit 0; }
# every figure in one JSON, every log and run folder in one archive
"$PY" - "$WORK" "$OUT/figures.json" <<'EOF'
import json, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
figures = {}
for path in sorted(work.glob("*.json")):
    try:
        figures[path.stem] = json.loads(path.read_text())
    except ValueError as e:
        figures[path.stem] = f"unreadable: {e}"
for path in sorted(work.glob("run-*/arcttt-run/summary.json")):
    figures[path.parts[-3] + "-summary"] = json.loads(path.read_text())
for log in sorted(work.glob("score-*.log")):
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    figures[log.stem] = json.loads(lines[-1]) if lines else log.read_text()[-500:]
out.write_text(json.dumps(figures, indent=1))
EOF
tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.safetensors' .
cat "$OUT/summary.txt"
echo "total $(($(date +%s) - T0)) s"
