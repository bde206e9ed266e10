#!/usr/bin/env bash
# GPU checks of `device`, `precision` and torchrun (docs/scaling.md), for a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make setup`
#
# 1. a warm mm5 run (mm5-er) on CUDA and on the CPU, fp32 both: every summary metric within 0.01,
#    speed-up printed;
# 2. a 4-step msvqa-mini run in bf16 on CUDA (smaller sizes; the base model as the bundled config's);
# 3. a 2-process torchrun of each setting against one process (within 0.02): one GPU per rank when
#    there are two, else both ranks on GPU 0 over gloo (NCCL refuses two ranks on one GPU);
# 4. the same for msvqa-mini-lwf with the language model sharded by FSDP (vlm.fsdp=true).
# Prints what it verified; exits non-zero at the first failed check. About 5-8 minutes on one modern
# GPU once the data exist (`mmcl data mm5`, `mmcl data msvqa-mini`: generated on the CPU, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MMCL=("$PY" -m mmcl)
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
OUT=${OUT:-$(mktemp -d -t mmcl-gpu-check.XXXX)}
Q=(logging.progress=false report=false)
say() { printf '\n== %s\n' "$*"; }

"$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device here (torch %s, cuda build %s)" % (torch.__version__, torch.version.cuda))
print("GPU: %s x%d, torch %s, CUDA %s, bf16 %s" % (torch.cuda.get_device_name(0), torch.cuda.device_count(),
      torch.__version__, torch.version.cuda, torch.cuda.is_bf16_supported()))
EOF
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

# compare A B TOL [same-device-kind]: every summary metric of run B within TOL of run A
compare() {
  "$PY" - "$@" <<'EOF'
import json, sys
a, b, tol = json.load(open(sys.argv[1] + "/metrics.json")), json.load(open(sys.argv[2] + "/metrics.json")), float(sys.argv[3])
worst = 0.0
for name, s in a["summary"].items():
    for k, v in s.items():
        w = b["summary"][name][k]
        if (v is None) != (w is None):
            sys.exit(f"FAIL {name}.{k}: {v} vs {w}")
        if v is not None:
            worst = max(worst, abs(v - w))
print(f"  {a['device']}/{a['precision']}/x{a['world_size']} vs {b['device']}/{b['precision']}/x{b['world_size']}: "
      f"largest summary difference {worst:.4f} (allowed {tol})")
if worst > tol:
    sys.exit("FAIL: metrics differ by more than the tolerance")
EOF
}

say "1. warm mm5 run: CUDA against CPU (fp32)"
"${MMCL[@]}" data mm5 >/dev/null
"${MMCL[@]}" run mm5-er device=cpu precision=fp32 "${Q[@]}" --out "$OUT/mm5-cpu" >/dev/null
"${MMCL[@]}" run mm5-er device=cuda precision=fp32 "${Q[@]}" --out "$OUT/mm5-cuda" >/dev/null
compare "$OUT/mm5-cpu" "$OUT/mm5-cuda" 0.01
"$PY" - "$OUT" <<'EOF'
import json, sys
t = {d: json.load(open(f"{sys.argv[1]}/mm5-{d}/metrics.json"))["timing"] for d in ("cpu", "cuda")}
print(f"  train: cpu {t['cpu']['train_s']:.1f} s, cuda {t['cuda']['train_s']:.1f} s: speed-up "
      f"{t['cpu']['train_s'] / t['cuda']['train_s']:.1f}x (total {t['cpu']['total_s'] / t['cuda']['total_s']:.1f}x)")
EOF
echo "  verified: mm5-er on CUDA gives the CPU's metrics"

say "1b. a CUDA run resumes on the CPU (checkpoints are device-independent)"
"${MMCL[@]}" run mm5-er device=cuda precision=fp32 "${Q[@]}" --out "$OUT/mm5-move" >/dev/null &
pid=$!
for _ in $(seq 600); do [ -f "$OUT/mm5-move/checkpoints/last.pt" ] && break; sleep 0.1; done
kill -TERM $pid 2>/dev/null || true
wait $pid || true
if [ -f "$OUT/mm5-move/metrics.json" ]; then
  echo "  not verified: the CUDA run finished before it could be interrupted"
else
  "${MMCL[@]}" run --resume "$OUT/mm5-move" device=cpu >/dev/null
  compare "$OUT/mm5-cuda" "$OUT/mm5-move" 0.01
  echo "  verified: interrupted on CUDA, resumed on the CPU, same metrics"
fi

SCN=(benchmark.train_images=40 benchmark.test_images=20 train.epochs=2 eval.max_new_tokens=24)
say "2. 4-step msvqa-mini in bf16 on CUDA"
"${MMCL[@]}" data msvqa-mini >/dev/null
"${MMCL[@]}" run msvqa-mini-finetune device=cuda precision=bf16 "${SCN[@]}" "${Q[@]}" --out "$OUT/msvqa-bf16" >/dev/null
"$PY" - "$OUT/msvqa-bf16" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
assert m["precision"] == "bf16" and m["device"].startswith("cuda") and len(m["experiences"]) == 4, m["device"]
print(f"  {m['device']} {m['precision']}: vqa last {m['summary']['vqa']['last_acc']:.3f}, "
      f"grounding_f1 last {m['summary']['grounding_f1']['last_acc']:.3f}, total {m['timing']['total_s']:.0f} s")
EOF
echo "  verified: the scenario setting trains and generates in bf16 on CUDA"

say "3. torchrun, 2 processes, each setting"
if [ "$NGPU" -ge 2 ]; then DEV=auto; BACKEND=""; else DEV=cuda:0; BACKEND=gloo; fi
for run in "mm5-er" "msvqa-mini-er"; do
  extra=("${Q[@]}" device=$DEV precision=fp32)
  [ "$run" = "msvqa-mini-er" ] && extra+=("${SCN[@]}")
  "${MMCL[@]}" run "$run" "${extra[@]}" --out "$OUT/$run-1" >/dev/null
  MMCL_DIST_BACKEND=$BACKEND OMP_NUM_THREADS=4 "$TORCHRUN" --standalone --nproc_per_node=2 -m mmcl run "$run" \
    "${extra[@]}" --out "$OUT/$run-2" >/dev/null
  compare "$OUT/$run-1" "$OUT/$run-2" 0.02
  "$PY" - "$OUT/$run-2" <<'EOF'
import json, sys
ends = [json.loads(l) for l in open(sys.argv[1] + "/events.jsonl") if '"experience_end"' in l]
assert ends and all(len(set(e["state_digests"])) == 1 and len(e["state_digests"]) == 2 for e in ends)
print(f"  method state identical on both ranks after all {len(ends)} experiences")
EOF
done
echo "  verified: 2-process torchrun of both settings matches one process (backend ${BACKEND:-nccl})"

say "4. torchrun, 2 processes, the language model sharded by FSDP (vlm.fsdp=true), LwF (a sharded teacher)"
extra=("${Q[@]}" "${SCN[@]}" device=$DEV precision=fp32 vlm.fsdp=true)
"${MMCL[@]}" run msvqa-mini-lwf "${extra[@]}" --out "$OUT/fsdp-1" >/dev/null
MMCL_DIST_BACKEND=$BACKEND OMP_NUM_THREADS=4 "$TORCHRUN" --standalone --nproc_per_node=2 -m mmcl run msvqa-mini-lwf \
  "${extra[@]}" --out "$OUT/fsdp-2" >/dev/null
compare "$OUT/fsdp-1" "$OUT/fsdp-2" 0.02
"$PY" - "$OUT/fsdp-2" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
assert m["fsdp"]["ranks"] == 2 and m["fsdp"]["sharded_units"] > 0, m["fsdp"]
print(f"  {m['fsdp']['sharded_units']} fully_shard units over 2 ranks")
EOF
echo "  verified: FSDP over the language model on 2 ranks matches one process (backend ${BACKEND:-nccl})"

say "all checks passed; runs in $OUT"
