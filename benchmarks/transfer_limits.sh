#!/usr/bin/env bash
# Measures ferry-bench over tcp and shm against this machine's limits, in one run, and prints a markdown table
# of medians with their ratios. Usage: benchmarks/transfer_limits.sh BUILD_DIR [runs=3] [seconds=3]
set -euo pipefail
build=${1:?build directory with benchmarks/ferry-bench}
runs=${2:-3} secs=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
baselines=${FERRY_BASELINES:-$here/../../shared/baselines}
bench=$build/benchmarks/ferry-bench
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
gbps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])'; }

out=$(mktemp)
"$bench" --mode target --listen 127.0.0.2:0 --buffer-size 1G >"$out" 2>&1 &
target_pid=$!
trap 'kill $target_pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$out" && break; sleep 0.1; done
target=$(grep -o "127.0.0.2:[0-9]*" "$out")

declare -A limit
for streams in 1 4; do
  vals=(); for _ in $(seq "$runs"); do vals+=("$("$baselines/tcp_limit" "$streams" "$secs" | gbps)"); done
  limit[tcp$streams]=$(median "${vals[@]}")
done
vals=(); for _ in $(seq "$runs"); do vals+=("$("$baselines/memcpy_limit" 1 | gbps)"); done
limit[memcpy1]=$(median "${vals[@]}")

# One row: protocol operation block streams local_blocks (local_blocks 128: a distinct local block per request;
# 1: every request reuses one hot local block, as iperf3 reuses its buffer).
row() {
  local protocol=$1 op=$2 block=$3 conns=$4 local_blocks=$5 vals=() m l streams ratio
  for _ in $(seq "$runs"); do
    vals+=("$("$bench" --mode initiator --target "$target" --protocol "$protocol" --operation "$op" \
      --block-size "$block" --batch-size 128 --threads 1 --connections "$conns" --local-blocks "$local_blocks" \
      --duration "$secs" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["throughput_gbps"])')")
  done
  m=$(median "${vals[@]}")
  if [[ $protocol == tcp ]]; then l=${limit[tcp$conns]}; streams=$conns; else l=${limit[memcpy1]}; streams=-; fi
  ratio=$(python3 -c "print('%.2f' % ($m / $l))")
  echo "| $protocol | $op | $block | 128 | $local_blocks | $streams | $m | $l | $ratio |"
}

echo "| protocol | operation | block | batch | local blocks | streams | ferry-bench GB/s (median of $runs) | limit GB/s | ratio |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for block in 1M 64K; do
  for op in write read; do
    for conns in 1 4; do row tcp "$op" "$block" "$conns" 128; done
    row tcp "$op" "$block" 1 1
  done
done
for block in 1M 64K; do
  for op in write read; do row shm "$op" "$block" 1 128; done
done
echo
echo "limits: tcp_limit 1 stream ${limit[tcp1]} GB/s, 4 streams ${limit[tcp4]} GB/s (iperf3, medians); memcpy_limit 1 thread ${limit[memcpy1]} GB/s"
