#!/usr/bin/env bash
# GPU check (issues 2 and 11): NF4 on CUDA, the fused-vs-reference equivalence in bf16, the forward benchmark at
# TinyLlama size, then issue 11's targets on the real demo model (SmolLM2-135M): decode, scaling, serving
# throughput (1 vs 16 clients, per-step breakdown) and routing's share of TTFT, each with --device cuda where the
# benchmark takes it (the server itself serves bf16 on CUDA: --dtype auto). Quick runs: ~10 minutes on one GPU.
# Prints the figures; writes JSON under ${OUT:-docs/bench/gpu}.
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-docs/bench/gpu}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PYEOF
echo "== nf4 on CUDA + fused-vs-reference equivalence (bf16) =="
"$PY" - <<'PYEOF'
import tempfile, time, torch
from brainstacks.base import load_base
from brainstacks.config import StackConfig
from brainstacks.reference import reference_forward
from brainstacks.stacks import StackedModel
from brainstacks.tiny_models import add_random_stacks, tiny_base

tmp = tempfile.mkdtemp()
path = tiny_base(f"{tmp}/base", hidden=256, layers=4, intermediate=704, heads=8, kv_heads=4)
for quant in ("nf4", "none"):
    lb = load_base(path, quantize=quant, dtype="bfloat16", device="cuda")
    sm = StackedModel(lb.model, StackConfig(rank=16, frozen_dtype="bfloat16"))
    add_random_stacks(sm, {"a": 3, "b": 2, "c": 2, "d": 2, "e": 1}, dtype="bfloat16")
    ids = torch.randint(4, 200, (4, 32), device="cuda")
    w = torch.tensor([[1, 0, .5, 0, 0], [0, 0, 0, 0, 0], [.3, .9, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.float32)
    with torch.no_grad(), sm.routing(w):
        fused = lb.model(ids).logits.float()
        with reference_forward(sm):
            ref = lb.model(ids).logits.float()
    rel = ((fused - ref).norm() / ref.norm()).item()
    q = lb.model.model.layers[0].self_attn.q_proj.base_layer
    print(f"{quant}: q_proj is {type(q).__name__}; bf16 fused vs reference relative error {rel:.2e}")
    assert rel < 2e-2, rel
    with sm.routing(w[:1]):
        out = lb.model.generate(ids[:1, :8], max_new_tokens=8, do_sample=False, pad_token_id=1)
    print(f"{quant}: generate on CUDA ok, {out.shape[1] - 8} new tokens")
PYEOF
echo "== forward benchmark at TinyLlama size (GPU) =="
"$PY" -m benchmarks.forward --quick --device cuda --json "$OUTDIR/forward_gpu.json"

# --device cuda for the benchmarks that take it; the others run as they are (and say so)
device_flag() { if "$PY" -m "benchmarks.$1" --help 2>/dev/null | grep -q -- "--device"; then echo "--device cuda"; fi; }
for b in decode scaling; do
  flag=$(device_flag "$b")
  echo "== $b on the demo model ${flag:-(it takes no --device flag: its own default device)} =="
  # shellcheck disable=SC2086
  "$PY" -m "benchmarks.$b" --quick $flag --json "$OUTDIR/${b}_gpu.json"
done
echo "== serving throughput on CUDA: 1 vs 16 clients, per-step breakdown =="
"$PY" -m benchmarks.throughput --quick --device cuda --rounds 2 --json "$OUTDIR/throughput_gpu.json"
echo "== routing's share of time to first token on CUDA =="
"$PY" -m benchmarks.ttft --quick --device cuda --json "$OUTDIR/ttft_gpu.json"
echo "GPU check done; JSON in $OUTDIR"
