#!/usr/bin/env bash
# One GPU check of tinyvgg, in at most 8 minutes on one card:
#
#   1. the card (nvidia-smi) and the versions (CuPy, PyTorch, cuDNN, TF32 settings);
#   2. the GPU tests:       python3 -m pytest -m gpu tests/test_gpu.py -q
#   3. the target: one VGG-16 training step at 224x224, batch 32, tinyvgg (as wired, and
#      with the CUDA kernels of tinyvgg/ops/gpu/ forced in) against PyTorch
#      (cuDNN), in float32 (CUPY_TF32=0; PyTorch with and without its default TF32
#      convolutions);
#   4. layer benchmarks:    python3 benchmarks/bench_layers.py --device gpu  (PyTorch alongside)
#   5. training benchmark:  python3 benchmarks/bench_train.py  --device gpu  (PyTorch alongside)
#   6. the target again with TF32 products on both sides (CUPY_TF32=1), when time is left.
#
# Results go to $OUT if set, else benchmarks/results/, as gpu_*.md (each naming the
# card) plus the benchmarks' JSON and the raw logs:
#   gpu_check.md            summary: card, versions, each step's status and time, test summary
#   gpu_target.md           the VGG-16 / 224 / batch-32 step (float32), and gpu_target_tf32.md
#   gpu_bench_layers.md     benchmarks/bench_layers.py's report, headed by the card's name
#   gpu_bench_train.md      benchmarks/bench_train.py's report
#   gpu_*.log               what each step printed
#
# Every step runs under `timeout`, sized from what is left of the budget
# (GPU_CHECK_BUDGET_S, default 470 s), so the script ends in time even when a
# step hangs. The GPU machine has CuPy, PyTorch, NumPy, pytest and hypothesis
# installed system-wide (python3), no virtual environment and no internet.
#
#   bash benchmarks/gpu_check.sh
#   OUT=/tmp/results bash benchmarks/gpu_check.sh

set -u
set -o pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
RESULTS=${OUT:-benchmarks/results}
RAW="$RESULTS/gpu_raw"
mkdir -p "$RESULTS" "$RAW"
START=$SECONDS
DEADLINE=$((START + BUDGET))
SUMMARY="$RESULTS/gpu_check.md"
STATUS_LINES=()

# run_step NAME MAX_SECONDS LOG COMMAND...: run under a timeout that fits the budget.
run_step() {
    local name=$1 max=$2 log=$3
    shift 3
    local left=$((DEADLINE - SECONDS - 15))  # keep 15 s for the kill grace and the summary
    local t=$((max < left ? max : left))
    if ((t < 20)); then
        echo "== $name: skipped, no time left" | tee "$log"
        STATUS_LINES+=("| $name | skipped (no time left) | 0 |")
        return 0
    fi
    echo "== $name (timeout ${t}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=5 "$t" "$@" 2>&1 | tee "$log"
    rc=$?
    local took=$((SECONDS - t0)) status
    case $rc in
        0) if grep -qE "[0-9]+ skipped" "$log" && ! grep -qE "[0-9]+ passed" "$log"; then
               status="**all skipped** (no usable GPU: see the log)"
           else
               status="ok"
           fi ;;
        124 | 137) status="**timed out** after ${t}s" ;;
        *) status="**failed** (exit $rc)" ;;
    esac
    STATUS_LINES+=("| $name | $status | $took |")
    return 0
}

# -- 1. the card ---------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    CARD=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    SMI=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1)
else
    CARD=""
    SMI="nvidia-smi not found"
fi
VERSIONS=$(timeout 60 "$PY" - <<'EOF' 2>&1
import os
try:
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"- card (CuPy): {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, "
          f"compute capability {props['major']}.{props['minor']}")
    print(f"- CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, "
          f"driver {cp.cuda.runtime.driverGetVersion()}")
except Exception as e:
    print(f"- CuPy: unusable ({type(e).__name__}: {e})")
try:
    import torch
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    print(f"- PyTorch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, cuDNN {cudnn}; "
          f"TF32 defaults: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
          f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
except Exception as e:
    print(f"- PyTorch: not usable ({type(e).__name__}: {e})")
import numpy
print(f"- NumPy {numpy.__version__}; CUPY_TF32={os.environ.get('CUPY_TF32', '(unset)')}")
EOF
)
if [ -z "$CARD" ]; then
    CARD=$(printf '%s\n' "$VERSIONS" | sed -n 's/^- card (CuPy): \([^,]*\),.*/\1/p' | head -n 1)
fi
CARD=${CARD:-unknown GPU}
echo "GPU: $CARD"
echo "$SMI"
echo "$VERSIONS"

# -- 2. the GPU tests ------------------------------------------------------------------
run_step "GPU tests" 180 "$RESULTS/gpu_tests.log" \
    "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rfEs

# -- 3. the target: VGG-16, 224x224, batch 32 -------------------------------------------
TARGET_PY="$RAW/gpu_target.py"
cat >"$TARGET_PY" <<'EOF'
"""One VGG-16 training step (224x224, batch 32, 1000 classes, SGD with momentum):
tinyvgg on CuPy against PyTorch (cuDNN). argv: OUT_MD LABEL CARD."""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())
from tinyvgg import backend  # noqa: E402
from tinyvgg import layers as L  # noqa: E402
from tinyvgg import ops  # noqa: E402
from tinyvgg.losses import SoftmaxCrossEntropy  # noqa: E402
from tinyvgg.models import vgg  # noqa: E402
from tinyvgg.ops import gpu as ck  # noqa: E402
from tinyvgg.optim import SGD  # noqa: E402

out_md, label, card = sys.argv[1], sys.argv[2], sys.argv[3]
B, S, K = int(os.environ.get("TARGET_BATCH", "32")), int(os.environ.get("TARGET_SIZE", "224")), 1000
REPS = int(os.environ.get("TARGET_REPS", "5"))
tf32 = os.environ.get("CUPY_TF32") == "1"
dev = backend.use("gpu")
cp = dev.xp
rng = np.random.default_rng(0)
x_host = rng.standard_normal((B, 3, S, S), dtype=np.float32)
y_host = rng.integers(0, K, B)


def timed(step, sync):
    step(); sync()  # warm-up: kernel compilation, allocations, cuDNN autotuning
    step(); sync()
    ts = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        step()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def kernels_wired():
    x = backend.to_device(np.zeros((1, 1, 4, 4), np.float32))
    w = backend.to_device(np.zeros((1, 1, 3, 3), np.float32))
    return isinstance(ops.conv2d_forward(x, w)[1], ck.GPUConvCache)


def force_kernels():
    cb = L.conv2d_backward
    L.conv2d_forward = lambda x, w, b=None, stride=1, padding=0, **kw: ck.conv2d_forward_gpu(
        x, w, b, stride, padding, **kw)
    L.conv2d_backward = lambda dy, c: ck.conv2d_backward_gpu(dy, c) if isinstance(c, ck.GPUConvCache) else cb(dy, c)
    L.maxpool2d_forward = lambda x, k=2, s=2, p=0: ck.maxpool2d_forward_gpu(x, k, s, p)
    L.maxpool2d_backward = lambda dy, c: ck.maxpool2d_backward_gpu(dy, c[1], c[0], *c[2:])


rows = []
sync = cp.cuda.Device().synchronize
backend.seed(0)
model = vgg("vgg16", num_classes=K, input_size=S, dropout=0.5, init="paper")
opt, loss_fn = SGD(model, 0.01, momentum=0.9, weight_decay=5e-4), SoftmaxCrossEntropy()
x, y = backend.to_device(x_host), backend.to_device(y_host)


def tv_step():
    loss_fn.forward(model.forward(x, train=True), y)
    model.backward(loss_fn.backward())
    opt.step()


wired = kernels_wired()
variants = [("tinyvgg (ops as wired: CUDA kernels " + ("in" if wired else "not yet wired") + ")", None)]
if not wired:
    variants.append(("tinyvgg (CUDA kernels forced in)", force_kernels))
for name, prepare in variants:
    if prepare:
        prepare()
    try:
        t = timed(tv_step, sync)
        rows.append({"impl": name, "step_s": t, "precision": "TF32 GEMMs" if tf32 else "float32"})
    except Exception as e:  # report and go on
        msg = ck.oom_message(B, e) if ck.is_out_of_memory(e) else f"{type(e).__name__}: {e}"
        rows.append({"impl": name, "error": msg})
    print(rows[-1], flush=True)
del model, opt, loss_fn, x, y
cp.get_default_memory_pool().free_all_blocks()

try:
    import torch
    assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
    nn = torch.nn
    torch.backends.cudnn.benchmark = True
    feats, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            feats.append(nn.MaxPool2d(2, 2))
        else:
            feats += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    net = nn.Sequential(*feats, nn.Flatten(), nn.Linear(512 * (S // 32) ** 2, 4096), nn.ReLU(True), nn.Dropout(0.5),
                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, K)).cuda().train()
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.tensor(x_host, device="cuda"), torch.tensor(y_host, device="cuda")
    lf = nn.CrossEntropyLoss()

    def th_step():
        topt.zero_grad(set_to_none=True)
        lf(net(tx), ty).backward()
        topt.step()

    settings = [(True, True, "PyTorch, TF32 convolutions and matmuls")] if tf32 else [
        (True, False, "PyTorch, defaults (TF32 cuDNN convolutions, float32 matmuls)"),
        (False, False, "PyTorch, float32 throughout (TF32 off)")]
    for conv_tf32, mm_tf32, name in settings:
        torch.backends.cudnn.allow_tf32 = conv_tf32
        torch.backends.cuda.matmul.allow_tf32 = mm_tf32
        rows.append({"impl": name, "step_s": timed(th_step, torch.cuda.synchronize), "torch": torch.__version__,
                     "cudnn": torch.backends.cudnn.version()})
        print(rows[-1], flush=True)
except Exception as e:
    rows.append({"impl": "PyTorch", "error": f"{type(e).__name__}: {e}"})

ref = [r for r in rows if r["impl"].startswith("PyTorch") and "step_s" in r]
same = ref[0] if tf32 else (ref[-1] if ref else None)  # the like-for-like precision
lines = [f"# VGG-16 training step, {S}x{S}, batch {B}, on {card} ({label})", "", f"GPU: {card}", "",
         f"Median of {REPS} steps after 2 warm-up steps; tinyvgg {'with CUPY_TF32=1' if tf32 else 'float32'}; "
         f"kernels wired into tinyvgg.ops: {wired}.", "",
         "| implementation | step (ms) | images/s | throughput vs PyTorch (same precision) |", "|---|---|---|---|"]
for r in rows:
    if "step_s" not in r:
        lines.append(f"| {r['impl']} | error: {r['error']} | | |")
        continue
    ratio = same["step_s"] / r["step_s"] if same else None
    lines.append(f"| {r['impl']} | {r['step_s'] * 1e3:.1f} | {B / r['step_s']:.0f} | "
                 + (f"{ratio:.2f}" if ratio else "n/a") + " |")
best = min((r for r in rows if r["impl"].startswith("tinyvgg") and "step_s" in r),
           key=lambda r: r["step_s"], default=None)  # the faster tinyvgg variant
if best and same:
    ratio = same["step_s"] / best["step_s"]
    lines += ["", f"Target (tinyvgg >= 0.5 x PyTorch's throughput at the same precision): "
              f"{ratio:.2f} x, **{'met' if ratio >= 0.5 else 'missed'}** ({best['impl']} vs {same['impl']})."]
open(out_md, "w").write("\n".join(lines) + "\n")
json.dump({"card": card, "label": label, "batch": B, "rows": rows, "wired": wired},
          open(out_md[:-3] + ".json", "w"), indent=2)
print("\n".join(lines))
EOF
run_step "target: VGG-16 224 batch 32, float32" 75 "$RESULTS/gpu_target.log" \
    env CUPY_TF32=0 "$PY" "$TARGET_PY" "$RESULTS/gpu_target.md" "float32" "$CARD"

# head_report SOURCE DEST TITLE: the benchmark's markdown report, headed by the card's name.
head_report() {
    local src=$1 dst=$2 title=$3
    if [ -f "$src" ]; then
        { echo "# $title on $CARD"; echo; echo "GPU: $CARD"; echo; cat "$src"; } >"$dst"
        local json="${src%.md}.json"
        [ -f "$json" ] && cp "$json" "${dst%.md}.json"
    else
        { echo "# $title on $CARD"; echo; echo "No report: the benchmark did not finish (see ${dst%.md}.log)."; } >"$dst"
    fi
}

# -- 4. layer benchmarks ---------------------------------------------------------------
if [ -f benchmarks/bench_layers.py ]; then
    run_step "bench_layers --device gpu" 80 "$RESULTS/gpu_bench_layers.log" \
        "$PY" benchmarks/bench_layers.py --device gpu --out "$RAW/layers" --repeats 7
    head_report "$RAW/layers/bench_layers.md" "$RESULTS/gpu_bench_layers.md" "Layer benchmarks (bench_layers.py)"
else
    STATUS_LINES+=("| bench_layers --device gpu | not present (benchmarks/bench_layers.py missing) | 0 |")
fi

# -- 5. training benchmark ---------------------------------------------------------------
if [ -f benchmarks/bench_train.py ]; then
    run_step "bench_train --device gpu" 80 "$RESULTS/gpu_bench_train.log" \
        env CUPY_TF32=0 "$PY" benchmarks/bench_train.py --device gpu --out "$RAW/train"
    head_report "$RAW/train/bench_train.md" "$RESULTS/gpu_bench_train.md" \
        "Training benchmark (bench_train.py, float32 GEMMs: CUPY_TF32=0)"
else
    STATUS_LINES+=("| bench_train --device gpu | not present (benchmarks/bench_train.py missing) | 0 |")
fi

# -- 6. the target with TF32 products on both sides, if there is time --------------------
run_step "target: VGG-16 224 batch 32, CUPY_TF32=1" 60 "$RESULTS/gpu_target_tf32.log" \
    env CUPY_TF32=1 "$PY" "$TARGET_PY" "$RESULTS/gpu_target_tf32.md" "TF32 products" "$CARD"

# -- summary ---------------------------------------------------------------------------
{
    echo "# GPU check on $CARD"
    echo
    echo "GPU: $CARD"
    echo
    echo '```'
    echo "$SMI"
    echo '```'
    echo
    echo "$VERSIONS"
    echo "- date: $(date -Iseconds), total time $((SECONDS - START)) s of a ${BUDGET} s budget"
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${STATUS_LINES[@]}"
    echo
    echo "## GPU tests (last lines of gpu_tests.log)"
    echo
    echo '```'
    tail -n 40 "$RESULTS/gpu_tests.log" 2>/dev/null || echo "(no log)"
    echo '```'
    echo
    for f in gpu_target.md gpu_target_tf32.md; do
        if [ -f "$RESULTS/$f" ]; then
            echo "## $f"
            echo
            sed -n '5,$p' "$RESULTS/$f"
            echo
        fi
    done
    echo "Reports: gpu_target*.md, gpu_bench_layers.md, gpu_bench_train.md (when present)."
} >"$SUMMARY"

echo
cat "$SUMMARY"
