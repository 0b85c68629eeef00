#!/bin/bash
# The synthetic comparison (every method, every anomaly kind) on one CUDA GPU inside a time
# budget, and the CUDA check of every method (benchmarks/cuda_check.py).
#
#   benchmarks/gpu_synthetic.sh OUT SECONDS [STEPS]
#
# Each method trains in its own process (the models are small, so one GPU serves them all);
# they stop at the deadline, and the summary takes the seeds that every method finished, which
# is exactly what `fae benchmark --seeds K` on one process gives (it skips finished runs). A
# second summary leaves f-AnoGAN (the slowest) out, to keep the other methods' later seeds.
# Needs the fae package importable (`pip install -e .`, or PYTHONPATH=src) and a GPU. For a dry
# run elsewhere: DEVICE=cpu SUBJECTS=4 CONFIG=small.toml (the CUDA check is then skipped, as
# with NO_CHECK=1).
# METHODS=fae,dfr runs only those (with threshold, which prepares the data).
set -u
out=$1 budget=$2 steps=${3:-2000}
device=${DEVICE:-cuda} subjects=${SUBJECTS:-20} config=${CONFIG:-benchmarks/configs/gpu.toml}
start=$SECONDS work=${FAE_GPU_WORK:-/tmp/fae-gpu}
mkdir -p "$out" "$work"
export TQDM_MININTERVAL=20 FAE_CACHE_DIR=$work/cache
all=${METHODS:-fae,threshold,random,bm,ae-mse,ae-ssim,vae,dfr,fanogan}
rest=${all/,fanogan/}
common=(--data "$work/data/datalist.csv" --steps "$steps" --device "$device"
    --config "$config" --out "$work/bench")

if [ "$device" != cpu ] && [ -z "${NO_CHECK:-}" ]; then
    timeout "$budget" python3 benchmarks/cuda_check.py --config "$config" \
        --out "$out/cuda_check.json" >"$work/cuda_check.log" 2>&1 &
fi
if [ ! -f "$work/data/datalist.csv" ]; then
    python3 -m fae make-synthetic "$work/data" --subjects "$subjects" --modalities t1 --seed 0 \
        --workers 12 >"$work/data.log" 2>&1 || { tail -3 "$work/data.log"; exit 1; }
fi
python3 -m fae benchmark "${common[@]}" --methods threshold --seeds 1 >"$work/prepare.log" 2>&1 ||
    { tail -3 "$work/prepare.log"; exit 1; }
echo "data ready after $((SECONDS - start)) s"

left=$((budget - (SECONDS - start) - 60))  # a minute for the summaries
[ "$left" -ge 1 ] || { echo "no time left to train after preparing the data"; exit 1; }
groups=$(echo "${all//,/ }" | tr ' ' '\n' | grep -vxE 'threshold|random|bm' | tr '\n' ' ')
simple=$(echo "${all//,/ }" | tr ' ' '\n' | grep -xE 'threshold|random|bm' | paste -sd,)
pids=()
for method in $groups $simple; do
    OMP_NUM_THREADS=2 timeout "$left" python3 -m fae benchmark "${common[@]}" --seeds 5 \
        --methods "$method" >"$work/log-$method.txt" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"  # the training jobs, not the CUDA check
echo "training stopped after $((SECONDS - start)) s"

finished() {  # the number of leading seeds with an evaluation, for every method in $1
    local k=5
    for method in ${1//,/ }; do
        local n=0
        while [ -f "$work/bench/runs/$method/seed$n/eval/metrics.json" ]; do n=$((n + 1)); done
        [ $n -lt $k ] && k=$n
    done
    echo $k
}
k_all=$(finished "$all") k_rest=$(finished "$rest")
echo "seeds finished by every method: $k_all; without f-AnoGAN: $k_rest"
if [ "$k_all" -gt 0 ] && [ "$rest" != "$all" ]; then
    python3 -m fae benchmark "${common[@]}" --methods $all --seeds "$k_all" >/dev/null 2>&1
    cp "$work/bench/results.md" "$out/all.md" && cp "$work/bench/results.json" "$out/all.json"
fi
if [ "$k_rest" -gt 0 ]; then
    python3 -m fae benchmark "${common[@]}" --methods "$rest" --seeds "$k_rest" \
        >/dev/null 2>&1
    cp "$work/bench/results.md" "$work/bench/results.json" "$work/bench/bars.png" \
        "$work/bench/pr_curves.png" "$out/"
fi
for log in "$work"/*.log "$work"/log-*.txt; do
    echo "== $log"
    tr '\r' '\n' <"$log" | grep -v '^\s*$' | tail -n 8
done >"$out/logs.txt"
echo "done after $((SECONDS - start)) s"
