#!/usr/bin/env bash
# Measures ferry-bench over tcp and shm against this machine's limits, in one run, and prints a markdown table
# of medians with their ratios.
# Usage: benchmarks/transfer_limits.sh BUILD_DIR [runs=3] [seconds=3] [cc=reno] [io_threads=per-connection]
# io_threads "per-connection": the target serves its connections on 4 I/O threads and the initiator's
# connections each get a thread of their own (ferry-bench --io-threads, engine_options::tcp::io_threads), as
# iperf3 since 3.16 gives each stream a thread; "cores": each side carries its connections on as many I/O
# threads as the machine has cores, the initiator on no more threads than it has connections; "0": every
# connection on the engine's own thread, each side.
# Every tcp row runs twice: with the system's congestion control (what ../shared/baselines/tcp_limit measures
# with iperf3) and with `cc` on both ends (ferry-bench --tcp-congestion); the second is also compared with
# iperf3 using `cc` (iperf3 -C), the like-for-like limit. The 1 MiB tcp rows are also measured against
# ferry-plain-tcp (plain sockets driven as iperf3 drives them) moving the same memory with the same congestion
# control, run alternately with ferry-bench: the share of a gap to iperf3 that the memory alone explains.
set -euo pipefail
build=${1:?build directory with benchmarks/ferry-bench}
runs=${2:-3} secs=${3:-3} cc=${4:-reno} io_threads=${5:-per-connection}
[[ $io_threads == cores || $io_threads == per-connection || $io_threads == 0 ]] ||
  { echo "io_threads: cores, per-connection or 0" >&2; exit 2; }
cores=$(nproc)
target_threads=0
[[ $io_threads == per-connection ]] && target_threads=4
[[ $io_threads == cores ]] && target_threads=$cores
here=$(cd "$(dirname "$0")" && pwd)
baselines=${FERRY_BASELINES:-$here/../../shared/baselines}
bench=$build/benchmarks/ferry-bench
plain=$build/benchmarks/ferry-plain-tcp
system_cc=$(cat /proc/sys/net/ipv4/tcp_congestion_control)
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
gbps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])'; }
# iperf3 as tcp_limit runs it (one server, loopback, 1 MiB writes), with congestion control $3 on the sender.
iperf3_with() {
  local streams=$1 seconds=$2 algorithm=$3 port out
  port=$((20000 + RANDOM % 20000))
  iperf3 -s -1 -p "$port" -B 127.0.0.1 >/dev/null 2>&1 &
  sleep 0.5
  out=$(iperf3 -c 127.0.0.1 -p "$port" -P "$streams" -t "$seconds" -l 1M -C "$algorithm" -J)
  wait 2>/dev/null || true
  python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e9))' <<<"$out"
}

start_target() { # congestion control ("" for the system's) -> sets target and target_pid
  local out
  out=$(mktemp)
  "$bench" --mode target --listen 127.0.0.2:0 --buffer-size 1G ${1:+--tcp-congestion "$1"} \
    --io-threads "$target_threads" >"$out" 2>&1 &
  target_pid=$!
  for _ in $(seq 50); do grep -q "listening on" "$out" && break; sleep 0.1; done
  target=$(grep -o "127.0.0.2:[0-9]*" "$out")
  rm -f "$out"
}
trap 'kill ${target_pid:-} 2>/dev/null' EXIT

declare -A limit
for streams in 1 4; do
  vals=() same=()
  for _ in $(seq "$runs"); do
    vals+=("$("$baselines/tcp_limit" "$streams" "$secs" | gbps)")
    same+=("$(iperf3_with "$streams" "$secs" "$cc")")
  done
  limit[tcp$streams]=$(median "${vals[@]}")
  limit[$cc$streams]=$(median "${same[@]}")
done
vals=(); for _ in $(seq "$runs"); do vals+=("$("$baselines/memcpy_limit" 1 | gbps)"); done
limit[memcpy1]=$(median "${vals[@]}")

# One row: protocol operation block streams memory congestion-control. memory "distinct": every request of a
# batch has its own local block and its own target block (128 MiB a side per batch of 1 MiB blocks: memory
# that is not in cache, the realistic case); "reused": every request uses one local and one target block,
# which stay in cache, as iperf3's sender and receiver reuse one buffer each.
row() {
  local protocol=$1 op=$2 block=$3 conns=$4 memory=$5 algorithm=$6 vals=() m l streams ratio same same_ratio
  local blocks=(--local-blocks 128) plain_blocks=128 plains=() p=- p_ratio=- threads=0
  [[ $io_threads == per-connection && $protocol == tcp ]] && threads=$conns
  [[ $io_threads == cores && $protocol == tcp ]] && threads=$((conns < cores ? conns : cores))
  [[ $memory == reused ]] && blocks=(--local-blocks 1 --remote-blocks 1) plain_blocks=1
  for _ in $(seq "$runs"); do
    vals+=("$("$bench" --mode initiator --target "$target" --protocol "$protocol" --operation "$op" \
      --block-size "$block" --batch-size 128 --threads 1 --connections "$conns" --io-threads "$threads" "${blocks[@]}" \
      ${algorithm:+--tcp-congestion "$algorithm"} --duration "$secs" --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["throughput_gbps"])')")
    if [[ $protocol == tcp && $block == 1M ]]; then
      plains+=("$("$plain" --streams "$conns" --block-size "$block" --blocks "$plain_blocks" \
        ${algorithm:+--congestion "$algorithm"} --duration "$secs" | gbps)")
    fi
  done
  m=$(median "${vals[@]}")
  if [[ ${#plains[@]} -gt 0 ]]; then
    p=$(median "${plains[@]}")
    p_ratio=$(python3 -c "print('%.2f' % ($m / $p))")
  fi
  if [[ $protocol == tcp ]]; then
    l=${limit[tcp$conns]} streams=$conns
    if [[ -n $algorithm ]]; then same=${limit[$algorithm$conns]}; else same=$l; fi
    same_ratio=$(python3 -c "print('%.2f' % ($m / $same))")
  else
    l=${limit[memcpy1]} streams=- same=- same_ratio=-
  fi
  ratio=$(python3 -c "print('%.2f' % ($m / $l))")
  local label=${algorithm:-$system_cc}
  [[ $protocol == shm ]] && label=-
  local io="$threads / $target_threads"
  [[ $protocol == shm ]] && io=-
  echo "| $protocol | $op | $block | $memory | $streams | $io | $label | $m | $l | $ratio | $same | $same_ratio | $p | $p_ratio |"
}

echo "| protocol | operation | block | memory | streams | io threads (initiator / target) | congestion control | ferry-bench GB/s (median of $runs) | limit GB/s | ratio | iperf3, same congestion control | ratio | plain sockets, same memory and congestion control | ratio |"
echo "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for algorithm in "" "$cc"; do
  start_target "$algorithm"
  for block in 1M 64K; do
    for op in write read; do
      for conns in 1 4; do
        row tcp "$op" "$block" "$conns" distinct "$algorithm"
        row tcp "$op" "$block" "$conns" reused "$algorithm"
      done
    done
  done
  kill "$target_pid"
  wait "$target_pid" 2>/dev/null || true
done
start_target ""
for block in 1M 64K; do
  for op in write read; do row shm "$op" "$block" 1 distinct ""; done
done
echo
echo "limits (medians): tcp_limit (iperf3, $system_cc) 1 stream ${limit[tcp1]} GB/s, 4 streams ${limit[tcp4]} GB/s;" \
  "iperf3 -C $cc 1 stream ${limit[${cc}1]} GB/s, 4 streams ${limit[${cc}4]} GB/s; memcpy_limit 1 thread ${limit[memcpy1]} GB/s"
