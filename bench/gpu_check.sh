#!/usr/bin/env bash
# The prepared GPU check: the first thing to run whenever a GPU is available (issues 13 and 21).
#
#     bash bench/gpu_wheels.sh               # here, with PyPI: .whl/hf and .whl/unsloth (32 MiB)
#     bash bench/gpu_check.sh --dry          # here: the plan of each call, the folders' sizes
#     bash bench/gpu_check.sh --rehearse     # here, on CPU: every step's code path, shrunk (CI runs it)
#     CALL=1 bash bench/gpu_check.sh         # on the GPU machine: call 1, then CALL=2 while it is warm
#
# The lent device machine (no network; python 3.12, torch 2.11 CUDA 13, transformers 5.17, peft)
# gives 15 minutes of device time, its start included, and 600 s a command: bench/README.md has
# the two calls' exact `run` arguments and each step's expected time. A call runs its steps in
# order, each under min(its cap, the time left of CHECK_LIMIT_S), and skips, with a line saying
# so, a step whose expected time no longer fits:
#   call 1 (CHECK_LIMIT_S 400): install env model gpu-tests ttt-{hf,unsloth}-{bf16-r256,4bit-r64}
#   call 2 (CHECK_LIMIT_S 200): install model search kvcache challenges plan run-{hf,unsloth} score-* profile-*
# (install and model are quick no-ops in call 2 on the warm machine, and redo their work on a cold one.)
#   install    pip install --no-index --no-deps --target $SITE the carried wheels (PYTHONPATH: the
#              repository's arcttt first, then $SITE)
#   env        nvidia-smi, the libraries' versions, and a bf16 matmul's TFLOP/s (env.json): the
#              measured peak beside the datasheet's (PEAK_TFLOPS, 989 for an H200) for each MFU
#   model      a random Qwen3-4B-shaped model in the nvarc format (bench/ttt_speed.py --steps 0)
#   gpu-tests  pytest -m gpu (tests/test_gpu.py: every backend and precision on a small Qwen3);
#              each child's stdout, stderr and figures in $WORK/gpu-tests
#   ttt-*      bench/ttt_speed.py at 8192 tokens: bf16 LoRA r=256 with embeddings and 4-bit r=64,
#              each on hf and (unsloth importable) on unsloth: tokens/s, both MFUs, peak memory
#   search     bench/search_speed.py: 16 views lock-step vs one by one vs generate
#   kvcache    bench/kv_cache.py: decode per token on the preallocated cache vs DynamicCache, 4k x 8
#   plan       arcttt profile --plan: the memory estimate to set beside the peaks
#   run-*      a 3-task `arcttt run` per backend, both at once, on a short config that finishes a
#              task (RUN_SET: 8 TTT steps at 4096 tokens), then its score and profile
# After every step: the elapsed time printed, $OUT/summary.txt appended, $OUT/figures.json (every
# step's JSON) and $OUT/logs.tar.gz (every log and run folder) rewritten, so a killed call still
# returns what it did: three files, within the device tool's eight.
#
# --rehearse runs every step on CPU: arcttt's own wheel built offline (gpu_wheels.sh --own) and
# installed the same way, a 2-layer Qwen3 (qwen3-mini) in the nvarc format, the GPU tests' children
# without CUDA (ARCTTT_GPU_REHEARSE=1, the hf 4-bit child: unsloth's CPU path is test_unsloth.py's),
# 1-2 steps of 64 tokens, one task, each step's cap 4 x the GPU's; it fails when any step fails or
# is skipped (tests/test_gpu_rehearsal.py runs it in CI).
# Knobs: CALL (1, 2; default both), STEPS (step names to run besides install/model), CHECK_LIMIT_S,
# PEAK_TFLOPS, PYTHON, OUT, WORK, SITE, MODEL, WHL.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MODE=gpu
case "${1:-}" in
    --dry) MODE=dry ;;
    --rehearse) MODE=rehearse ;;
    "") ;;
    *) echo "gpu_check: unknown argument '$1' (--dry, --rehearse or none)" >&2; exit 2 ;;
esac
CALL=${CALL:-all}
case "$CALL" in 1) DEFAULT_LIMIT=400 ;; 2) DEFAULT_LIMIT=200 ;; all) DEFAULT_LIMIT=540 ;;
    *) echo "gpu_check: CALL must be 1, 2 or all" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/gpu-check-out}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/arcttt-site}
WORK=${WORK:-/tmp/arcttt-gpu-check}
MODEL=${MODEL:-/tmp/arcttt-qwen3-4b}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}  # dense bf16 of an H100/H200 SXM by the datasheet; an L4: 121
# the shapes and budgets of a GPU call, and their shrunk CPU stand-ins
SHAPE=qwen3-4b SEQ=8192 TTT_STEPS=4 TASKS=3 GPU_TESTS=""
SEARCH_ARGS=(--tasks 1 --views 16 --max-new 64 --repeat 1 --dfs-seconds 5)
KV_ARGS=(--prompt 4096 --views 8 --new 32 --repeat 1 --dfs-seconds 3)
RUN_SET=(--set data.n_sequences=8 --set data.max_len=4096 --set model.max_seq_len=4096 --set ttt.steps=8
         --set ttt.batch_tokens=4096 --set search.n_augmentations=4 --set select.n_views=4)
RUN_BUDGET_MAX=120 CAP_SCALE=1
if [ $MODE = rehearse ]; then  # caps 4 x the GPU's: a CPU shared with other work may be slow
    CALL=all DEFAULT_LIMIT=1800 CAP_SCALE=4
    SITE=$WORK/site MODEL=$WORK/qwen3-mini WHL=$WORK/whl
    SHAPE=qwen3-mini SEQ=64 TTT_STEPS=1 TASKS=1 GPU_TESTS="hf-4"
    SEARCH_ARGS=(--tasks 1 --views 2 --max-new 8 --repeat 1 --dfs-seconds 1)
    KV_ARGS=(--prompt 64 --views 2 --new 4 --repeat 1 --dfs-seconds 1)
    RUN_SET=(--set data.n_sequences=2 --set data.max_len=4096 --set model.max_seq_len=4096 --set ttt.steps=2
             --set ttt.batch_tokens=4096 --set search.n_augmentations=2 --set select.n_views=2)
    RUN_BUDGET_MAX=150
fi
LIMIT=${CHECK_LIMIT_S:-$DEFAULT_LIMIT}
T0=$(date +%s)
FAILED=()

left() { echo $((LIMIT - ($(date +%s) - T0))); }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
in_call() { [ "$CALL" = all ] || [[ " $1 " == *" $CALL "* ]]; }  # CALLS: the calls a step belongs to
wanted() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

if [ $MODE = dry ]; then
    echo "gpu_check --dry: call $CALL, limit ${LIMIT} s (step: expected s on the H200 <= cap s: command)"
else
    mkdir -p "$OUT" "$WORK"
    : >"$OUT/summary.txt"
    echo "gpu_check $MODE, call $CALL, limit ${LIMIT} s, $(date -u +%FT%TZ)" | tee -a "$OUT/summary.txt"
fi

collect() {  # every figure in one JSON, every log and run folder in one archive: after each step
    "$PY" - "$WORK" "$OUT/figures.json" <<'EOF'
import json, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
figures = {}
for path in sorted([*work.glob("*.json"), *work.glob("gpu-tests/*.json")]):
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
    local tmp=$OUT/logs.tar.gz.$BASHPID  # (the two runs' steps end in parallel)
    tar -czf "$tmp" -C "$WORK" --exclude='*.safetensors' --exclude='./site' --exclude='./whl' \
        --exclude='./data' --exclude='unsloth_compiled_cache*' --exclude='__pycache__' . 2>/dev/null
    mv "$tmp" "$OUT/logs.tar.gz"
}

step() {  # NAME CALLS EXPECT_S MAX_S COMMAND...: COMMAND under min(MAX_S, time left), logged to $WORK/NAME.log
    local name=$1 calls=$2 need=$3 most=$(($4 * CAP_SCALE))
    shift 4
    in_call "$calls" || return 0
    if [ $MODE = dry ]; then
        printf '%-20s %4s <= %4s s: %s\n' "$name" "$need" "$most" "$*"
        DRY_SUM=$((DRY_SUM + need))
        return 0
    fi
    local have
    have=$(left)
    if [ "$have" -lt "$need" ]; then
        echo "$name skipped: ${have} s left, needs ${need}" | tee -a "$OUT/summary.txt"
        [ $MODE = rehearse ] && FAILED+=("$name (skipped)")
        return 0
    fi
    local limit=$((most < have ? most : have)) t=$(date +%s) rc
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - t)) s (elapsed $(($(date +%s) - T0)) of ${LIMIT} s)" | tee -a "$OUT/summary.txt"
    tail -n 5 "$WORK/$name.log"
    [ $rc = 0 ] || FAILED+=("$name (rc=$rc)")
    collect
    return $rc
}
DRY_SUM=0

# --- the carried folders ---------------------------------------------------------------------------
if [ $MODE = dry ]; then
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
export PYTHONPATH="$REPO:$SITE" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export UNSLOTH_COMPILE_LOCATION=$WORK/unsloth_compiled_cache

[ $MODE = rehearse ] && step wheels "1 2" 5 300 env PYTHON="$PY" bash bench/gpu_wheels.sh --own "$WHL"
install() {  # the carried wheels into $SITE; a no-op when the same wheels went there before (warm call 2)
    local wheels=() marker=$SITE/.installed
    for folder in hf unsloth; do [ -d "$WHL/$folder" ] && wheels+=("$WHL/$folder"/*.whl); done
    [ ${#wheels[@]} -gt 0 ] || { echo "no wheels in $WHL/hf or $WHL/unsloth"; return 1; }
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$(ls -l "${wheels[@]}")" ]; then
        echo "already installed: ${#wheels[@]} wheels"
        return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
        && ls -l "${wheels[@]}" >"$marker"
}
[ $MODE = dry ] || export -f install
export PY WHL SITE
step install "1 2" 15 90 bash -c install

HAS_UNSLOTH=1
[ $MODE = dry ] || "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('unsloth') is None)" 2>/dev/null \
    || HAS_UNSLOTH=0
wanted env && step env 1 15 40 "$PY" - "$WORK/env.json" <<'EOF'
import json, subprocess, sys, time
from importlib import metadata

import torch

out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
for name in ("transformers", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "trl", "arcttt"):
    try:  # the installed versions, without importing (unsloth patches what it is imported with)
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
if cuda:
    out["gpu"] = torch.cuda.get_device_name()
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()


# a plain bf16 matmul's rate: the measured peak each MFU is also given against
n, reps = (8192, 50) if cuda else (512, 5)
a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=device) for _ in range(2))
for _ in range(3):
    a @ b
sync()
t = time.perf_counter()
for _ in range(reps):
    a @ b
sync()
out["matmul_bf16_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - t) / 1e12, 3)
out["matmul_n"] = n
print(json.dumps(out, indent=1))
open(sys.argv[1], "w").write(json.dumps(out, indent=1))
EOF
MEASURED=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['matmul_bf16_tflops'])" "$WORK/env.json" \
    2>/dev/null || echo 790)  # (no env.json: the H200's figure of the device README)

step model "1 2" 30 120 "$PY" bench/ttt_speed.py --shape "$SHAPE" --keep-model "$MODEL" --format nvarc --steps 0
wanted gpu-tests && step gpu-tests 1 90 150 env ARCTTT_GPU_OUT="$WORK/gpu-tests" ARCTTT_GPU_REHEARSE=$([ $MODE = rehearse ] \
    && echo 1 || echo 0) ARCTTT_GPU_BACKENDS="$GPU_TESTS" "$PY" -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_gpu.py

backends=(hf)
[ $HAS_UNSLOTH = 1 ] && backends+=(unsloth)
for b in "${backends[@]}"; do
    wanted ttt || break
    expect=25 cap=75
    [ "$b" = unsloth ] && expect=45 cap=110  # its import, patching and first compiles: ~20 s more, maybe 60
    step "ttt-$b-bf16-r256" 1 $expect $cap "$PY" bench/ttt_speed.py --model "$MODEL" --backend "$b" --dtype bf16 \
        --rank 256 --train-embeddings --seq-len $SEQ --steps $TTT_STEPS --warmup 1 --peak-tflops "$PEAK_TFLOPS" \
        --measured-tflops "$MEASURED" --out "$WORK/ttt-$b-bf16-r256.json"
    step "ttt-$b-4bit-r64" 1 $((expect + 10)) $((cap + 5)) "$PY" bench/ttt_speed.py --model "$MODEL" --backend "$b" --dtype bf16 \
        --rank 64 --load-in-4bit --seq-len $SEQ --steps $TTT_STEPS --warmup 1 --peak-tflops "$PEAK_TFLOPS" \
        --measured-tflops "$MEASURED" --out "$WORK/ttt-$b-4bit-r64.json"
done
wanted search && step search 2 35 60 "$PY" bench/search_speed.py --model "$MODEL" --dtype bf16 "${SEARCH_ARGS[@]}" \
    --out "$WORK/search.json"
wanted kvcache && step kvcache 2 25 50 "$PY" bench/kv_cache.py --model "$MODEL" --dtype bf16 "${KV_ARGS[@]}" \
    --out "$WORK/kvcache.json"

CHALLENGES=$WORK/data/arc-agi_evaluation_challenges.json
step challenges 2 3 30 "$PY" -m arcttt data export --split arc-agi-1-eval --out "$WORK/data" --tasks $TASKS
wanted plan && step plan 2 5 30 "$PY" -m arcttt profile --plan --challenges "$CHALLENGES" --config kaggle-l4x4 \
    --model "$MODEL"

# the runs: both backends at once (one GPU holds two 4-bit 4B workers), each for what is left but
# the scoring's and archiving's 20 s
budget=$(( $(left) - 20 ))
[ "$budget" -gt $RUN_BUDGET_MAX ] && budget=$RUN_BUDGET_MAX
[ $MODE = dry ] && budget=$RUN_BUDGET_MAX
runs=()
in_call 2 && wanted runs && runs=("${backends[@]}")
run_step() {
    [ $MODE = dry ] || rm -rf "$WORK/run-$1"
    step "run-$1" 2 60 $((budget + 15)) "$PY" -m arcttt run --challenges "$CHALLENGES" --model "$MODEL" \
        --out "$WORK/run-$1/submission.json" --run-dir "$WORK/run-$1/arcttt-run" --config kaggle-l4x4 \
        --time-budget "$budget" --workers 1 --set "model.backend=$1" "${RUN_SET[@]}" --quiet
}
pids=()
for b in "${runs[@]}"; do
    if [ $MODE = dry ]; then
        run_step "$b"
    else
        run_step "$b" &
        pids+=($!)
    fi
done
[ $MODE = dry ] && [ ${#runs[@]} -gt 1 ] && DRY_SUM=$((DRY_SUM - 60 * (${#runs[@]} - 1)))  # at once: one's time
for p in "${pids[@]}"; do wait "$p" || FAILED+=("run (pid $p)"); done  # (an empty list expands to nothing)
for b in "${runs[@]}"; do
    step "score-$b" 2 3 30 "$PY" -m arcttt score "$WORK/run-$b/submission.json" \
        --solutions "$WORK/data/arc-agi_evaluation_solutions.json" --json
    step "profile-$b" 2 3 30 "$PY" -m arcttt profile "$WORK/run-$b/arcttt-run"
done

if [ $MODE = dry ]; then
    echo "expected ${DRY_SUM} s of the ${LIMIT} s limit (the runs at once: counted once); dry run: nothing was run"
    exit 0
fi
collect
echo "total $(($(date +%s) - T0)) s" | tee -a "$OUT/summary.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
    exit 1
fi
