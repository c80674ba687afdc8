#!/usr/bin/env bash
# The GPU proof (issue 15) as prepared device calls, run from the checkout root on a lent GPU machine:
#   part1: CIFAR-10 JPEGs (carried in .data/), bench_train.py, then `reproduce --archs resnet56` until
#          ${REPRO_SECONDS:-300} s have passed (a killed reproduction resumes);
#   part2: the same reproduce again (resumes, finishes what fits), then the engine benchmarks;
#   train: one call for issue 10: bench_train (baseline, train's CUDA default eager and compiled), then
#          `reproduce --stages ${STAGES:-sdn}` into ${REPRO_OUT:-runs/repro} (train compiles each stage by
#          default on one GPU), then the batch-512 rows (eager and compiled, bf16) with what is left of
#          ${BUDGET:-570} s (ROWS512=0: not them; ROWS_AFTER: other rows instead); each stage folder comes back as $OUT/TAG-ARCH-STAGE.tgz (TAG: the
#          folder's name) and continues from .data/ in a later call;
#   methods: one call for issue 30: ResNet-56 on the CIFAR-10 JPEGs, a CNN (${CNN_EPOCHS:-25} epochs), then
#           ic-only, mixed, mixed --distill 0.5 and mixed --cascade from it (${IC_EPOCHS:-6} each), an SDN from scratch
#           (${SDN_EPOCHS:-25}), same seed; each analyzed, then `compare` (accuracy at 25/50/75/100 % cost,
#           max_softmax and ztw) into $OUT/compare.md and compare.svg; about 8 minutes on an H200 (estimated from the H100 reproduction's epoch times, not measured);
#   reproduce-methods: issue 30 as one `reproduce --methods ic-only,mixed,ztw,distill,sdn` (CNN ${CNN_EPOCHS:-25},
#           the methods on it ${IC_EPOCHS:-6}, SDN ${SDN_EPOCHS:-25} epochs; stages at once by the CUDA default)
#           into $OUT/reproduction.md (the methods table); tested on the CPU with DATA_SPEC=digits ARCH=small
#           CNN_EPOCHS=1 IC_EPOCHS=1 SDN_EPOCHS=1 DEV=cpu; a killed call resumes from runs-reproduce-methods.tgz;
#   robustness: one call for issue 31: a ResNet-56 SDN from scratch (${SDN_EPOCHS:-30} epochs) on the
#           CIFAR-10 JPEGs, analyzed; DeepSloth per input (linf, l2) and universal (linf) on ${INPUTS:-all}
#           test inputs, `analyze --corruptions`, then benchmarks/drift_monitor.py; into $OUT/robustness.log;
#           not yet run on a GPU (tested on the CPU with ARCH=small SDN_EPOCHS=1 INPUTS=256 DEV=cpu);
#   latency: one call for issue 32: a ResNet-56 SDN (${SDN_EPOCHS:-10} epochs) profiled on the GPU (batch 1 and
#           ${BATCH:-256}), `analyze --latency-budget` at half the no-exit time, then benchmarks/bench_latency.py
#           (speed: the CUDA engine's stages beside fp32/INT8 ONNX on the CPU; calibration, paired realised
#           latency, INT8); into $OUT/latency.log; tested on the CPU with ARCH=small SDN_EPOCHS=1 DEV=cpu;
#   concurrent: one call for issue 35: the ResNet-56 reproduction shortened (CNN ${CNN_EPOCHS:-20}, IC-only
#           ${IC_EPOCHS:-5}, SDN ${SDN_EPOCHS:-20} epochs) with `--max-concurrent 1` (one stage after another,
#           compiled ahead) and with the default (2 per GPU, each stage its own process), same seed; wall
#           times, accuracies and the schedule into $OUT/concurrent.log; about 5 minutes on an H100
#           (estimated from the H100 reproduction's epoch times); tested on the CPU with
#           DATA_SPEC=digits ARCH=small CNN_EPOCHS=1 IC_EPOCHS=1 SDN_EPOCHS=1 DEV=cpu;
#   serve: one call for issue 33 on a GPU: a ${ARCH:-resnet56} SDN (${SDN_EPOCHS:-10} epochs) on the CIFAR-10
#           JPEGs, analyzed (--no-html), then benchmarks/bench_serve.py at concurrency ${CONCURRENCY:-1 16 64}
#           (${REQUESTS:-2000} requests, --max-batch ${MAX_BATCH:-64}): the CUDA torch engine's service and
#           its export's (onnxruntime's CUDA provider where it has one, else the CPU's), each beside its
#           no-exit copy; into $OUT/serve.log; tested on the CPU with DATA_SPEC=digits ARCH=small SDN_EPOCHS=1
#           DEV=cpu REQUESTS=200 CONCURRENCY="1 16";
#   engine: the engine benchmarks alone (no data): the throughput engine like with like, eager fp32,
#           compiled (CUDA graphs per stage and bucket; batch 1 pipelined, then not) and bf16,
#           about 4 x ${ENGINE_SECONDS:-150} s.
# Everything printed also lands in $OUT; the run folders (without cached records) are packed into
# $OUT/runs-cnn.tgz and runs-sdn.tgz, so a later call on a fresh machine can continue from them
# (copy them into .data/ and carry .data).
set -uo pipefail
export PYTHONPATH=src:deploy/src PYTHONUNBUFFERED=1  # the deploy runtime is its own distribution
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
  # a reproduction packed by an earlier call (its .tgz files copied into .data/) continues where it stopped
  R=${REPRO_OUT:-runs/repro}; TAG=$(basename "$R")
  if [ ! -d "$R" ]; then for t in .data/"$TAG"-*.tgz; do [ -f "$t" ] && tar -xzf "$t"; done; fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  B="python3 benchmarks/bench_train.py --device $DEV --arch ${ARCH:-resnet56} ${BENCH_ARGS:---epoch --steps 30 --reps 2 --warmup 10}"
  if [ "${BENCH_SECONDS:-150}" -gt 0 ]; then  # BENCH_SECONDS=0 skips it (timeout 0 would mean no limit)
    timeout "${BENCH_SECONDS:-150}" $B --compile-rows one --rows "baseline: fp32|(train's CUDA default)|default + compile|CUDA graphs only" \
      --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.txt"
  fi
  # train compiles each stage by default on one GPU (long enough to pay back); REPRO_ARGS may override
  timeout $(( $(left) - ${AFTER_SECONDS:-70} )) python3 -m shallowdeep reproduce --data "imagefolder:$DATA" \
    --out "$R" --archs "${ARCHS:-resnet56}" --stages "${STAGES:-sdn}" ${REPRO_ARGS:-} 2>&1 \
    | grep -v "it/s\]" | tee "$OUT/reproduce.log"
  echo "reproduce exit: ${PIPESTATUS[0]} ($(left) s left)" | tee -a "$OUT/reproduce.log"
  cp "$R"/reproduction.md "$R"/reproduction.json "$OUT/" 2>/dev/null
  # where each stage's time went: its wall time over every call, the part before its first step, its epochs,
  # and run.json's time_parts (setup's data, model and device parts; loop start, between epochs, finish)
  for f in "$R"/*/*/run.json; do
    python3 - "$f" <<'PY' 2>/dev/null | tee -a "$OUT/reproduce.log"
import json, sys
m = json.load(open(sys.argv[1])); e = m.get("epochs", [])
s = sorted(x["seconds"] for x in e)
print(sys.argv[1], m.get("status"), f"{len(e)} epochs", f"wall {m.get('wall_seconds', float('nan')):.1f} s",
      f"setup {m.get('setup_seconds', float('nan')):.1f} s", f"epochs {sum(s):.1f} s",
      f"first {e[0]['seconds']:.1f} s median {s[len(s) // 2]:.2f} s" if e else "",
      f"eager while compiling: {sum(1 for x in e if x.get('eager'))} epochs, "
      f"{sum(x['seconds'] for x in e if x.get('eager')):.1f} s")
print("  beside the epochs:", ", ".join(f"{k} {v:.2f} s" for k, v in m.get("time_parts", {}).items()))
PY
  done
  # and where each analysis's time went (report.json's time_parts: data, records, analyses, figures, ...)
  for f in "$R"/*/*/report/report.json; do
    python3 - "$f" <<'PY' 2>/dev/null | tee -a "$OUT/reproduce.log"
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1], f"wall {r.get('wall_seconds', float('nan')):.1f} s",
      f"(in the pipeline {r['pipeline_seconds']:.1f} s)" if "pipeline_seconds" in r else "",
      ", ".join(f"{k} {v:.2f} s" for k, v in r.get("time_parts", {}).items()))
PY
  done
  # then bench_train rows in what is left: ROWS_AFTER (label fragments, | between them; default the
  # batch-512 rows); after a reproduction on this machine the compiled rows' steps are in the
  # compiler's cache (seconds, not a minute, per compiled row)
  if [ "${ROWS512:-1}" = 1 ] && [ "$(left)" -gt 40 ]; then  # ROWS512=0 leaves the device time unused
    timeout $(( $(left) - 15 )) $B --compile-rows all --rows "${ROWS_AFTER:-all but compile, batch 512|with compile, batch 512}" \
      --json "$OUT/bench_train2.json" 2>&1 | tee "$OUT/bench_train2.txt"
  fi
  # one pack per stage (a returned file may hold 16 MiB; three ResNet-56 stages with a checkpoint come
  # close together): weights, checkpoint (an unfinished stage resumes from it), run.json, report;
  # the cached records are left out (analyze collects them again)
  for d in "$R"/*/*/; do
    [ -f "$d/run.json" ] || continue
    a=$(basename "$(dirname "$d")"); st=$(basename "$d")
    tar --exclude='records' -czf "$OUT/$TAG-$a-$st.tgz" "$d" 2>/dev/null
  done
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
if [ "$part" = robustness ]; then
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  R=runs/robust/sdn; SD="python3 -m shallowdeep"; D="--device ${DEV:-cuda}"; L="$OUT/robustness.log"
  N=${INPUTS:+--inputs $INPUTS}
  [ -f $R/model.safetensors ] || $SD train --quiet --mode sdn --arch "${ARCH:-resnet56}" --data "imagefolder:$DATA" \
    --epochs "${SDN_EPOCHS:-30}" $D --out $R 2>&1 | tee -a "$L"
  $SD analyze $R $D --quiet 2>&1 | tee -a "$L"
  for a in "" "--universal" "--norm l2"; do $SD attack $R $D $N $a 2>&1 | grep -v Warning | tee -a "$L"; done
  $SD analyze $R $D --corruptions 2>&1 | grep -v "^  rule\|collecting\|collected" | tee -a "$L"
  python3 benchmarks/drift_monitor.py $R 2>&1 | tee -a "$L"
  cp $R/report/report.json "$OUT/robustness-report.json"
  exit 0
fi
if [ "$part" = latency ]; then
  # issue 32 on a GPU: a ResNet-56 SDN (${SDN_EPOCHS:-10} epochs), its stages profiled on the GPU at batch 1
  # and ${BATCH:-256}, thresholds for a latency budget (half of the no-exit time), the benchmark's two parts
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ort', o.__version__, o.get_available_providers())"
    date -u; } | tee -a "$OUT/device.txt"
  R=runs/latency/sdn; SD="python3 -m shallowdeep"; D="--device ${DEV:-cuda}"; L="$OUT/latency.log"
  [ -f $R/model.safetensors ] || $SD train --quiet --mode sdn --arch "${ARCH:-resnet56}" --data "imagefolder:$DATA" \
    --epochs "${SDN_EPOCHS:-10}" $D --out $R 2>&1 | tee -a "$L"
  $SD analyze $R $D --quiet 2>&1 | tee -a "$L"
  $SD profile $R $D --batch "${BATCH:-256}" --out "$OUT/latency-batch${BATCH:-256}.json" 2>&1 | tee -a "$L"
  $SD profile $R $D --out $R/latency.json 2>&1 | tee -a "$L" && cp $R/latency.json "$OUT/latency-batch1.json"
  python3 benchmarks/bench_latency.py speed --archs "${ARCH:-resnet56}" $D --batch "${BATCH:-256}" --reps 30 2>&1 | grep -v Warn | tee -a "$L"
  timeout "${CAL_SECONDS:-240}" python3 benchmarks/bench_latency.py calibration --run $R $D --inputs 1000 2>&1 | grep -v Warn | tee -a "$L"
  # last: INT8 export (in the calibration part) refuses a run calibrated for a latency budget
  MS=$(python3 -c "import json,sys; p=json.load(open(sys.argv[1])); print(sum(s['mean_ms'] for s in p['stages']) / 2)" $R/latency.json)
  $SD analyze $R $D --latency-budget "$MS" 2>&1 | grep -A4 "predict uses" | tee -a "$L"
  exit 0
fi
if [ "$part" = concurrent ]; then
  # issue 35 on a GPU: the same shortened reproduction one stage at a time, then several at once
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  if [ -z "${DATA_SPEC:-}" ] && [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"; fi
  SPEC=${DATA_SPEC:-imagefolder:$DATA}; C="$OUT/concurrent.log"
  E="--cnn-epochs ${CNN_EPOCHS:-20} --ic-epochs ${IC_EPOCHS:-5} --sdn-epochs ${SDN_EPOCHS:-20}"
  for k in 1 default; do
    K=""; [ "$k" = default ] || K="--max-concurrent $k"
    rm -rf "runs/concurrent-$k"; t0=$(date +%s.%N)
    timeout "${REPRO_SECONDS:-270}" python3 -m shallowdeep reproduce --data "$SPEC" --archs "${ARCH:-resnet56}" $E \
      --device "${DEV:-cuda}" --out "runs/concurrent-$k" $K --quiet 2>&1 | grep -v Warning > "$OUT/concurrent-$k.txt"
    echo "max-concurrent $k: exit ${PIPESTATUS[0]}, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)") s" | tee -a "$C"
    grep -E "^\| ${ARCH:-resnet56} |took|^- .*(cnn|sdn|ic-only).* s" "runs/concurrent-$k/reproduction.md" | tee -a "$C"
  done
  exit 0
fi
if [ "$part" = reproduce-methods ]; then
  # issue 30 through the product's own path: every method a stage of one reproduction, the methods table
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  if [ -z "${DATA_SPEC:-}" ] && [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"; fi
  R=runs/reproduce-methods; t0=$(date +%s.%N)
  if [ ! -d $R ] && [ -f .data/runs-reproduce-methods.tgz ]; then tar -xzf .data/runs-reproduce-methods.tgz; fi
  timeout "${REPRO_SECONDS:-570}" python3 -m shallowdeep reproduce --data "${DATA_SPEC:-imagefolder:$DATA}" \
    --archs "${ARCH:-resnet56}" --methods ic-only,mixed,ztw,distill,sdn --cnn-epochs "${CNN_EPOCHS:-25}" \
    --ic-epochs "${IC_EPOCHS:-6}" --mixed-epochs "${IC_EPOCHS:-6}" --sdn-epochs "${SDN_EPOCHS:-25}" \
    --device "${DEV:-cuda}" --out $R --quiet 2>&1 | grep -v Warning | tee "$OUT/reproduce-methods.log"
  echo "exit ${PIPESTATUS[0]}, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)") s" | tee -a "$OUT/reproduce-methods.log"
  cp $R/reproduction.md $R/reproduction.json "$OUT/" 2>/dev/null
  tar -czf "$OUT/runs-reproduce-methods.tgz" --exclude=records $R  # a later call continues from it
  exit 0
fi
if [ "$part" = serve ]; then
  DEV=${DEV:-cuda}; S=runs/serve-sdn
  if [ -z "${DATA_SPEC:-}" ] && [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"; fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnxruntime', o.__version__, o.get_available_providers())"
    date -u; } | tee -a "$OUT/device.txt" "$OUT/serve.log"
  python3 -m shallowdeep train --quiet --mode sdn --arch "${ARCH:-resnet56}" --data "${DATA_SPEC:-imagefolder:$DATA}" \
    --epochs "${SDN_EPOCHS:-10}" --device "$DEV" --out $S 2>&1 | grep -v Warning | tee -a "$OUT/serve.log"
  python3 -m shallowdeep analyze $S --device "$DEV" --no-html 2>&1 | grep -v Warning | tee -a "$OUT/serve.log"
  ORT_DEV=cpu  # the export's sessions on CUDA only where this onnxruntime has the provider
  python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" && ORT_DEV=$DEV
  for rt in torch onnx; do
    d=$DEV; [ $rt = onnx ] && d=$ORT_DEV
    timeout "${SERVE_SECONDS:-200}" python3 benchmarks/bench_serve.py $S --runtime $rt --device "$d" \
      --requests "${REQUESTS:-2000}" --concurrency ${CONCURRENCY:-1 16 64} --max-batch "${MAX_BATCH:-64}" \
      --max-wait-ms 2 2>&1 | grep -v Warning | tee -a "$OUT/serve.log"
  done
  exit 0
fi
if [ "$part" = methods ]; then
  if [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$DATA"; fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/device.txt"
  M=runs/methods; A=${ARCH:-resnet56}; SD="python3 -m shallowdeep"
  $SD train --quiet --mode cnn --arch "$A" --data "imagefolder:$DATA" --epochs "${CNN_EPOCHS:-25}" --out $M/cnn 2>&1 | tee -a "$OUT/methods.log"
  $SD train --quiet --mode ic-only --from $M/cnn --epochs "${IC_EPOCHS:-6}" --out $M/ic-only 2>&1 | tee -a "$OUT/methods.log"
  $SD train --quiet --mode mixed --from $M/cnn --epochs "${IC_EPOCHS:-6}" --out $M/mixed 2>&1 | tee -a "$OUT/methods.log"
  $SD train --quiet --mode mixed --from $M/cnn --epochs "${IC_EPOCHS:-6}" --distill 0.5 --out $M/mixed-distill 2>&1 | tee -a "$OUT/methods.log"
  $SD train --quiet --mode mixed --from $M/cnn --epochs "${IC_EPOCHS:-6}" --cascade --out $M/mixed-cascade 2>&1 | tee -a "$OUT/methods.log"
  $SD train --quiet --mode sdn --arch "$A" --data "imagefolder:$DATA" --epochs "${SDN_EPOCHS:-25}" --out $M/sdn 2>&1 | tee -a "$OUT/methods.log"
  for r in ic-only mixed mixed-distill mixed-cascade sdn; do $SD analyze $M/$r --device "${DEV:-cuda}" 2>&1 | tee -a "$OUT/methods.log"; done
  $SD compare $M/sdn $M/ic-only $M/mixed $M/mixed-distill $M/mixed-cascade --rules max_softmax,ztw --chart "$OUT/compare.svg" \
    --device "${DEV:-cuda}" 2>&1 | tee "$OUT/compare.md"
  for f in $M/*/run.json; do python3 -c "import json; m=json.load(open('$f')); print('$f', m['status'], 'wall', round(m['wall_seconds'], 1), 's, last val acc', [round(a, 4) for a in m['epochs'][-1]['val_acc']])" | tee -a "$OUT/methods.log"; done
  exit 0
fi
if [ ! -d runs/repro ]; then for t in .data/runs-cnn.tgz .data/runs-sdn.tgz; do [ -f "$t" ] && tar -xzf "$t"; done; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"

COMPILE=""
if [ "$part" = part1 ]; then
  timeout "${BENCH_SECONDS:-200}" python3 benchmarks/bench_train.py ${BENCH_ARGS:---epoch --compile-rows one} --json "$OUT/bench_train.json" \
    2>&1 | grep -v Warning | tee "$OUT/bench_train.txt"
  # the reproduction needs no compile flag: train compiles a stage by default on one GPU when it has
  # the steps to pay the compilation back (Runtime.default)
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
