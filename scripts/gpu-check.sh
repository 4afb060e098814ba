#!/usr/bin/env bash
# The CUDA paths, run for real on one NVIDIA GPU, inside about 8 minutes:
#   env      GPU, driver, CUDA, torch and library versions, the commit, `attn-zoo list --device cuda`
#   parity   every CUDA test (`pytest -k "cuda or gpu"`): each mechanism's paths against `reference`, forward and
#            backward, float32 and bf16 autocast; CUDA events, CUDA peak memory, natten on CUDA
#   bench    `attn-zoo bench` of every paper preset and every built-in mechanism in zoo_224, batch 64, fwd and
#            fwd+bwd, float32 and bf16 autocast, every path that runs here forced and `auto`, with the GEMM
#            peak and the fraction of it reached (calls planned by scripts/gpu_bench_plan.py; flex last)
#   anchors  timm's Swin-T and GCViT-XXT against ours with the same weights; natten against our MSDA paths
#            (benchmarks/gpu_anchors.py)
#   suite    the quick suite (suites/quick.toml) with measure.device = "cuda"
# Each part runs under its own time box (its whole process group is stopped at the end of it), and a failing
# part never stops the next. Everything lands in OUT_DIR (at most 8 files; logs.tgz holds the rest).
#
# usage: scripts/gpu-check.sh OUT_DIR
# environment:
#   GPU_CHECK_PARTS   parts to run, in this order (default: "env parity bench anchors suite")
#   GPU_CHECK_WHEELS  a folder of wheels installed first, offline, into a private folder put on PYTHONPATH
#                     (pip --no-index --no-deps --target): for a machine without network, e.g. timm, xformers,
#                     natten. Without it, nothing is installed: the current Python must hold torch and the
#                     test extra; on a machine with network install with `pip install -e '.[test,gpu]'` first.
#   GPU_CHECK_DRY=1   the plumbing on CPU in a minute or two (tiny sizes, a few tests), for a machine without GPU
#   GPU_CHECK_BENCH_PLAN  a file of bench calls to run instead of the full plan, one per line:
#                     PRECISION<TAB>PATHS<TAB>TARGETS (PRECISION float32 or bf16), e.g. to finish a cut-off run
#   GPU_CHECK_ANCHOR_ARGS  more arguments for benchmarks/gpu_anchors.py (e.g. "--parts natten")
#   GPU_CHECK_CALL_CAP  seconds one bench call may take at most (default: what is left of the bench box)
#   GPU_CHECK_COMMIT  the commit to record when the checkout has no .git
#   PYTHON            the interpreter (default: python3)
#   GPU_CHECK_T_<PART> time box of a part in seconds (defaults below)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d /tmp/gpu-check.XXXXXX)
mkdir -p "$W/logs" "$W/bench" "$W/cache"
PY=${PYTHON:-python3}
PARTS=${GPU_CHECK_PARTS:-env parity bench anchors suite}
DRY=${GPU_CHECK_DRY:-0}
export PYTHONUNBUFFERED=1 ATTN_ZOO_CACHE="$W/cache" TORCHINDUCTOR_CACHE_DIR="$W/inductor"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# result rows record this commit (a staged copy has no .git of its own)
[ -n "${GPU_CHECK_COMMIT:-}" ] && export ATTN_ZOO_COMMIT="$GPU_CHECK_COMMIT"
T_PARITY=${GPU_CHECK_T_PARITY:-100}
T_BENCH=${GPU_CHECK_T_BENCH:-210}
T_ANCHORS=${GPU_CHECK_T_ANCHORS:-60}
T_SUITE=${GPU_CHECK_T_SUITE:-45}
START=$SECONDS

note() { echo "[$((SECONDS - START)) s] $*" | tee -a "$W/parts.txt"; }

# box SECONDS NAME CMD...: run CMD with its output in logs/NAME.log; after SECONDS its whole process group gets
# SIGINT (pytest and the CLI write what they have), 10 s later SIGKILL. Returns CMD's status (124: timed out).
box() {
  local secs=$1 name=$2 rc
  shift 2
  local t0=$SECONDS
  timeout -s INT -k 10 "$secs" "$@" >"$W/logs/$name.log" 2>&1
  rc=$?
  note "$name: exit $rc in $((SECONDS - t0)) s (box $secs s)$([ $rc = 124 ] && echo ', TIMED OUT')"
  return $rc
}

# publish: the tables, the summary and the logs into OUT, after every part (a run stopped from outside keeps
# what was done)
publish() {  # publish [quick]: quick leaves the bench tables as they are (no Python start)
  if [ -f "$W/bench.sqlite" ] && [ "${1:-}" != quick ]; then
    # every bench cell from the store (also those of a call that was stopped), with the precision and the path
    # asked for, as one JSON list and one table per precision
    "$PY" - "$W" >"$W/bench-table.txt" 2>>"$W/logs/bench-results.log" <<'EOF'
import json, sys
from pathlib import Path
from attn_zoo.cli.bench_cmd import render
from attn_zoo.grid.store import Store
work = Path(sys.argv[1])
rows = []
for cell in Store(work / "bench.sqlite").cells():
    spec = cell["spec"]
    rows.append({"cell_id": cell["cell_id"], "label": spec["label"], "status": cell["status"],
                 "reason": cell["reason"], "img_size": spec["model"]["img_size"],
                 "batch": spec["measure"]["batch_size"], "backend": spec["model"]["backend"],
                 "backends": cell["backends"] or [], "precision": "bf16 autocast" if spec["measure"]["amp"] else "float32",
                 "device": spec["measure"]["device"], "metrics": cell["metrics"], "environment": cell["environment"]})
(work / "bench-cells.json").write_text(json.dumps(rows, indent=1))
for precision in ("float32", "bf16 autocast"):
    part = [r for r in rows if r["precision"] == precision]
    print(f"\n{precision}: {len(part)} cells, {sum(r['status'] == 'ok' for r in part)} ok")
    print(render(part))
EOF
  fi
  {
    echo "# gpu-check $(date -u +%FT%TZ), $((SECONDS - START)) s"
    echo
    echo '```'
    cat "$W/parts.txt"
    echo '```'
    for f in env.txt bench-table.txt quick-table.txt; do
      [ -f "$W/$f" ] && printf '\n## %s\n\n```\n%s\n```\n' "$f" "$(cat "$W/$f")"
    done
    [ -f "$W/logs/anchors.log" ] && printf '\n## anchors\n\n%s\n' "$(grep -v WARNING "$W/logs/anchors.log")"
    [ -f "$W/logs/parity.log" ] && printf '\n## parity (failures and errors)\n\n```\n%s\n```\n' \
      "$(grep -E '^(FAILED|ERROR)|passed|failed' "$W/logs/parity.log" | tail -60)"
  } >"$W/summary.md"
  for f in summary.md env.txt parity-junit.xml bench-cells.json anchors.json quick-rows.json; do
    [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
  done
  tar -C "$W" --exclude='./inductor' --exclude='./site' --exclude='*.pt' --exclude='*.ckpt' -czf "$OUT/logs.tgz" .
  return 0
}

# -- set-up --------------------------------------------------------------------------------------------------
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  note "installing offline into $W/site: $(cd "$GPU_CHECK_WHEELS" && ls *.whl | tr '\n' ' ')"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$W/site" \
    "$GPU_CHECK_WHEELS"/*.whl >"$W/logs/setup.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$W/site"
  else
    note "wheel install FAILED (logs/setup.log); going on with what is installed"
  fi
fi
if [ -d "$W/site/xformers" ]; then
  # xformers wheels are built for one torch: keep it only if its attention runs here, so that its tests and
  # benchmarks skip with "not installed" rather than fail one by one
  if ! "$PY" -c "
import torch, xformers.ops as xops
q = torch.randn(2, 49, 3, 32, device='cuda')
xops.memory_efficient_attention(q, q, q, attn_bias=torch.zeros(2, 3, 49, 56, device='cuda')[..., :49])
" >"$W/logs/xformers-check.log" 2>&1; then
    note "xformers removed: its attention does not run here ($(tail -1 "$W/logs/xformers-check.log" | cut -c1-300))"
    rm -rf "$W/site/xformers" "$W"/site/xformers-*
  else
    note "xformers: memory_efficient_attention ran on CUDA"
  fi
fi
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  note "dry run on CPU: tiny sizes, a few tests"
else
  DEVICE=cuda
fi
AZ=("$PY" -m attn_zoo)

# -- env -----------------------------------------------------------------------------------------------------
if [[ " $PARTS " == *" env "* ]]; then
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: ${GPU_CHECK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    echo "host: $(uname -a)"
    echo "cpus: $(nproc)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
      --format=csv 2>&1 || echo "nvidia-smi: not available"
    nvidia-smi 2>&1 | head -15
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "capability", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "tf32 cudnn", torch.backends.cudnn.allow_tf32)
for name in ("triton", "timm", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "pytest", "pytest-xdist",
             "pytest-benchmark", "hypothesis", "xformers", "natten", "fvcore", "tqdm"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "NOT INSTALLED")
for mod in ("xformers.ops", "natten"):
    try:
        m = importlib.import_module(mod)
        extra = f" HAS_LIBNATTEN={m.HAS_LIBNATTEN}" if mod == "natten" else ""
        print("import", mod, "ok", extra, getattr(m, "__file__", ""))
    except Exception as exc:
        print("import", mod, "FAILED:", type(exc).__name__, str(exc)[:300])
EOF
  } >"$W/env.txt" 2>&1
  "${AZ[@]}" list --device "$DEVICE" >>"$W/env.txt" 2>&1
  note "env written"
  publish
fi

# -- parity --------------------------------------------------------------------------------------------------
if [[ " $PARTS " == *" parity "* ]]; then
  TESTS=(tests/test_backend_parity.py tests/test_gcvit.py tests/test_neighborhood.py tests/test_measure_latency.py
    tests/test_measure_memory.py tests/test_measure_profile.py tests/test_measure_bench.py)
  SELECT="cuda or gpu"
  [ "$DRY" = 1 ] && SELECT="swin-swmsa-pad and cpu"
  XDIST=()
  "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${GPU_CHECK_WORKERS:-8}")
  box "$T_PARITY" parity "$PY" -m pytest -p no:cacheprovider -q -rA "${XDIST[@]}" -k "$SELECT" \
    --junitxml="$W/parity-junit.xml" "${TESTS[@]}"
  note "parity: $(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$W/logs/parity.log" | tail -1)"
  publish
fi

# -- bench ---------------------------------------------------------------------------------------------------
if [[ " $PARTS " == *" bench "* ]]; then
  BENCH=(--device "$DEVICE" --mode fwd fwdbwd --warmup 2 --min-repeats 5 --max-repeats 20 --time-cap 0.3
    --target-ci 0.03 --store "$W/bench.sqlite" --json)
  if [ "$DRY" = 1 ]; then
    BENCH+=(--batch 2 --img-size 64 --max-repeats 5 --time-cap 0.1)
    PLAN_TARGETS=(swin_t msda)
  else
    BENCH+=(--batch 64)
    PLAN_TARGETS=()
  fi
  if [ -n "${GPU_CHECK_BENCH_PLAN:-}" ]; then
    cp "$GPU_CHECK_BENCH_PLAN" "$W/bench/calls.tsv"
  else
    "$PY" scripts/gpu_bench_plan.py --device "$DEVICE" "${PLAN_TARGETS[@]}" >"$W/bench/plan.tsv" 2>"$W/logs/plan.log"
    # non-flex calls in float32 then bf16, then the flex calls (the plan puts them last) in both
    for pass in fast slow; do
      for precision in float32 bf16; do
        while IFS=$'\t' read -r paths targets; do
          [[ "$paths" == flex* ]] && [ $pass = fast ] && continue
          [[ "$paths" != flex* ]] && [ $pass = slow ] && continue
          printf '%s\t%s\t%s\n' "$precision" "$paths" "$targets"
        done <"$W/bench/plan.tsv"
      done
    done >"$W/bench/calls.tsv"
  fi
  note "bench: $(wc -l <"$W/bench/calls.tsv") calls"
  BENCH_END=$((SECONDS + T_BENCH))
  i=0
  while IFS=$'\t' read -r precision paths targets; do
    left=$((BENCH_END - SECONDS))
    [ $left -lt 10 ] && { note "bench: out of time, skipped: $precision | $paths | $targets"; continue; }
    [ -n "${GPU_CHECK_CALL_CAP:-}" ] && [ "$left" -gt "$GPU_CHECK_CALL_CAP" ] && left=$GPU_CHECK_CALL_CAP
    i=$((i + 1))
    amp=()
    [ "$precision" = bf16 ] && amp=(--amp)
    # shellcheck disable=SC2086  # paths and targets are space-separated lists
    box "$left" "bench-$i" "${AZ[@]}" bench $targets --backend $paths "${amp[@]}" "${BENCH[@]}" </dev/null
    note "bench-$i: $precision | $paths | $targets"
    publish quick
  done <"$W/bench/calls.tsv"
  publish
fi

# -- anchors -------------------------------------------------------------------------------------------------
if [[ " $PARTS " == *" anchors "* ]]; then
  ANCHOR=(--device "$DEVICE" --out "$W/anchors.json")
  [ "$DRY" = 1 ] && ANCHOR+=(--batch 1 --rounds 1 --calls 1 --dtypes float32)
  [ "$DRY" = 1 ] || ANCHOR+=(--batch 64 --rounds 3 --calls 5)
  box "$T_ANCHORS" anchors "$PY" benchmarks/gpu_anchors.py "${ANCHOR[@]}" ${GPU_CHECK_ANCHOR_ARGS:-}
  publish
fi

# -- suite ---------------------------------------------------------------------------------------------------
if [[ " $PARTS " == *" suite "* ]]; then
  SUITE=(--set "measure.device=\"$DEVICE\"" --out "$W/quick" --no-progress --no-plots --jobs 4)
  [ "$DRY" = 1 ] && SUITE+=(--set data.train_size=128 --set data.test_size=64 --set train.epochs=1
    --set 'grid.mechanism=["swin"]' --set 'grid.seed=[0]' --jobs 1)
  box "$T_SUITE" suite "${AZ[@]}" run suites/quick.toml "${SUITE[@]}"
  "${AZ[@]}" results "$W/quick" --status all >"$W/quick-table.txt" 2>&1
  "${AZ[@]}" results "$W/quick" --status all --json >"$W/quick-rows.json" 2>>"$W/logs/suite.log"
fi

publish
note "done: $(ls "$OUT" | tr '\n' ' ')"
[ -f "$W/logs/anchors.log" ] && grep -v WARNING "$W/logs/anchors.log" | tail -40
