#!/usr/bin/env bash
# The GPU proof (issue 15) as prepared device calls, run from the checkout root on a lent GPU machine:
#   part1: CIFAR-10 JPEGs (carried in .data/), bench_train.py, then `reproduce --archs resnet56` until
#          ${REPRO_SECONDS:-300} s have passed (a killed reproduction resumes);
#   part2: the same reproduce again (resumes, finishes what fits), then the engine benchmarks;
#   train: one call for issue 10: bench_train (baseline, train's CUDA default eager and compiled), then
#          `reproduce --stages sdn` (the SDN from scratch, compiled if that row's epoch was faster), then
#          the batch-512 rows (eager and compiled, bf16) with what is left of ${BUDGET:-570} s;
#   engine: the engine benchmarks alone (no data): the throughput engine like with like, eager fp32,
#           compiled (CUDA graphs per stage and bucket; batch 1 pipelined, then not) and bf16,
#           about 4 x ${ENGINE_SECONDS:-150} s.
# Everything printed also lands in $OUT; the run folders (without cached records) are packed into
# $OUT/runs-cnn.tgz and runs-sdn.tgz, so a later call on a fresh machine can continue from them
# (copy them into .data/ and carry .data).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATA=/tmp/cifar10-jpeg
part=${1:-part1}
bench_engine_all() {
  for extra in "--compile" "" "--compile --pipelined off" "--precision bf16"; do
    timeout "${ENGINE_SECONDS:-150}" python3 benchmarks/bench_engine.py --device cuda --batch 1024 --inputs-batched 8192 \
      --inputs 48 --reps 3 $extra 2>&1 | grep -v Warning | tee -a "$OUT/bench_engine.txt"
  done
}
if [ "$part" = train ]; then
  # one device call (issue 10): training speed side by side, then the paper's SDN-from-scratch stage of
  # the ResNet-56 reproduction, then the batch-512 and bf16 compiled rows, all inside ${BUDGET:-570} s
  T0=$SECONDS; BUDGET=${BUDGET:-570}; DEV=${DEV:-cuda}
  left() { echo $(( BUDGET - (SECONDS - T0) )); }
  if [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"; fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  B="python3 benchmarks/bench_train.py --device $DEV --arch ${ARCH:-resnet56} ${BENCH_ARGS:---epoch --steps 30 --reps 2 --warmup 10}"
  timeout "${BENCH_SECONDS:-150}" $B --compile-rows one --rows "baseline: fp32|(train's CUDA default)|default + compile" \
    --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.txt"
  # compile the reproduction only if the compiled epoch (its compilation paid once per stage, in the
  # row's warm-up) beat the eager one here
  COMPILE=$(python3 - "$OUT/bench_train.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception:
    print(""); sys.exit()
e = rows.get("resident + channels-last, fp32 (train's CUDA default)", {})
c = rows.get("train's CUDA default + compile", {})
print("--compile" if "epoch_s" in c and c["epoch_s"] < e.get("epoch_s", float("inf")) else "")
PY
)
  echo "reproduce compile flag: '${COMPILE}' ($(left) s left)" | tee -a "$OUT/device.txt"
  timeout $(( $(left) - ${AFTER_SECONDS:-70} )) python3 -m shallowdeep reproduce --data "imagefolder:$DATA" \
    --out runs/repro --archs "${ARCHS:-resnet56}" --stages "${STAGES:-sdn}" $COMPILE ${REPRO_ARGS:-} 2>&1 \
    | grep -v "it/s\]" | tee "$OUT/reproduce.log"
  echo "reproduce exit: ${PIPESTATUS[0]} ($(left) s left)" | tee -a "$OUT/reproduce.log"
  cp runs/repro/reproduction.md runs/repro/reproduction.json "$OUT/" 2>/dev/null
  if [ "$(left)" -gt 40 ]; then
    timeout $(( $(left) - 15 )) $B --compile-rows all --rows "all but compile, batch 512|with compile, batch 512" \
      --json "$OUT/bench_train2.json" 2>&1 | tee "$OUT/bench_train2.txt"
  fi
  tar --exclude='checkpoint*' --exclude='train.safetensors' -czf "$OUT/runs-sdn.tgz" runs/repro 2>/dev/null
  ls -la "$OUT"
  exit 0
fi
if [ "$part" = engine ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"
  bench_engine_all
  exit 0
fi
if [ ! -d "$DATA/train" ]; then
  mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"
fi
if [ ! -d runs/repro ]; then for t in .data/runs-cnn.tgz .data/runs-sdn.tgz; do [ -f "$t" ] && tar -xzf "$t"; done; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"

COMPILE=""
if [ "$part" = part1 ]; then
  timeout "${BENCH_SECONDS:-200}" python3 benchmarks/bench_train.py ${BENCH_ARGS:---epoch --compile-rows one} --json "$OUT/bench_train.json" \
    2>&1 | grep -v Warning | tee "$OUT/bench_train.txt"
  # compile for the reproduction only if, in the time this call has for it, it finishes more epochs
  # (each stage compiles once) than eager does: the measured payback rule
  COMPILE=$(python3 - "$OUT/bench_train.json" "${REPRO_SECONDS:-300}" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception:
    print(""); sys.exit()
budget = float(sys.argv[2])
e = rows.get("resident + channels-last, fp32 (train's CUDA default)", {})
c = rows.get("train's CUDA default + compile", {})
if "epoch_s" in e and "epoch_s" in c:
    eager_epochs = budget / e["epoch_s"]
    compiled_epochs = max(0.0, budget - 3 * c["warmup_s"]) / c["epoch_s"]
    print("--compile" if compiled_epochs > 1.1 * eager_epochs else "")
PY
)
  echo "reproduce compile flag: '${COMPILE}'" | tee -a "$OUT/device.txt"
  mkdir -p runs && echo "$COMPILE" > runs/compile.flag
else
  COMPILE=$(cat runs/compile.flag 2>/dev/null || true)
fi
mkdir -p runs
timeout "${REPRO_SECONDS:-300}" python3 -m shallowdeep reproduce --data "imagefolder:$DATA" --out runs/repro \
  --archs "${ARCHS:-resnet56}" $COMPILE ${REPRO_ARGS:-} --quiet 2>&1 | grep -v Warning | tee -a "$OUT/reproduce.log"
echo "reproduce exit: $?" | tee -a "$OUT/reproduce.log"
for f in runs/repro/*/*/run.json; do
  [ -f "$f" ] && python3 -c "import json,sys; m=json.load(open('$f')); e=m['epochs']; print('$f', m['status'], len(e), 'epochs', 'last val acc', [round(a,4) for a in e[-1]['val_acc']] if e else None, 'median epoch s', sorted(x['seconds'] for x in e)[len(e)//2] if e else None)" | tee -a "$OUT/reproduce.log"
done
cp runs/repro/reproduction.md "$OUT/" 2>/dev/null
if [ "$part" = part2 ]; then
  bench_engine_all
fi
# two packs, each under the 16 MiB a returned file may have
tar --exclude='records' --exclude='*/sdn' -czf "$OUT/runs-cnn.tgz" runs/repro runs/compile.flag 2>/dev/null
tar --exclude='records' -czf "$OUT/runs-sdn.tgz" runs/repro/*/sdn 2>/dev/null
ls -la "$OUT"
