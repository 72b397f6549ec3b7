#!/usr/bin/env bash
# Runs ferry-bench as a user would: a target on 127.0.0.2, then short initiator runs over tcp and shm, reading
# and writing, with --verify (every byte checked end to end) and --json (the fields BENCHMARKS.md relies on).
set -euo pipefail
bench=${1:?path to ferry-bench}
out=$(mktemp)
"$bench" --mode target --listen 127.0.0.2:0 --buffer-size 64M >"$out" 2>&1 &
target_pid=$!
trap 'kill $target_pid 2>/dev/null; wait $target_pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
target=$(grep -o "127.0.0.2:[0-9]*" "$out")
for protocol in tcp shm; do
  for op in write read; do
    json=$("$bench" --mode initiator --target "$target" --protocol "$protocol" --operation "$op" --block-size 64K \
      --batch-size 32 --threads 2 --duration 0.5 --verify --json)
    python3 - "$json" "$protocol" "$op" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
for key in ("throughput_gbps", "bytes", "seconds"):
    assert key in j, key
assert "p50" in j["latency_us"] and "p99" in j["latency_us"]
assert j["protocol"] == sys.argv[2] and j["operation"] == sys.argv[3]
assert j["bytes"] > 0 and j["throughput_gbps"] > 0
print(f'{sys.argv[2]} {sys.argv[3]}: {j["throughput_gbps"]:.2f} GB/s, verified')
PY
  done
done
# The knobs BENCHMARKS.md uses: a congestion control for the data connections, one reused block a side.
json=$("$bench" --mode initiator --target "$target" --protocol tcp --operation write --block-size 64K \
  --batch-size 16 --tcp-congestion reno --local-blocks 1 --remote-blocks 1 --duration 0.3 --json)
python3 - "$json" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["tcp_congestion"] == "reno", j["tcp_congestion"]
assert j["local_blocks"] == 1 and j["remote_blocks"] == 1, (j["local_blocks"], j["remote_blocks"])
assert j["bytes"] > 0
print(f'tcp write, reno, one reused block a side: {j["throughput_gbps"]:.2f} GB/s')
PY
# Connections on I/O threads of their own, on both sides (--io-threads): every byte still verified.
"$bench" --mode target --listen 127.0.0.3:0 --buffer-size 64M --io-threads 2 >"$out.threads" 2>&1 &
threaded_pid=$!
trap 'kill $target_pid $threaded_pid 2>/dev/null; wait $target_pid $threaded_pid 2>/dev/null; rm -f "$out" "$out.threads"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out.threads" && break; sleep 0.1; done
threaded=$(grep -o "127.0.0.3:[0-9]*" "$out.threads")
for op in write read; do
  json=$("$bench" --mode initiator --target "$threaded" --protocol tcp --operation "$op" --block-size 256K \
    --batch-size 32 --connections 4 --io-threads 2 --duration 0.5 --verify --json)
  python3 - "$json" "$op" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["io_threads"] == 2 and j["connections"] == 4, (j["io_threads"], j["connections"])
assert j["operation"] == sys.argv[2] and j["verify"] and j["bytes"] > 0
print(f'tcp {sys.argv[2]}, 4 connections on 2 io threads a side: {j["throughput_gbps"]:.2f} GB/s, verified')
PY
done
if err=$("$bench" --mode initiator --target "$target" --protocol tcp --tcp-congestion no-such-algorithm \
  --duration 0.3 2>&1 >/dev/null); then
  echo "a congestion control the kernel lacks must fail the run"; exit 1
fi
grep -q 'no-such-algorithm' <<<"$err" || { echo "the error must name the algorithm: $err"; exit 1; }
echo "unknown congestion control: refused with the reason, as expected"
if "$bench" --mode initiator --target 127.0.0.2:1 --protocol tcp --duration 0.5 >/dev/null 2>&1; then
  echo "an unreachable target must fail"; exit 1
fi
echo "unreachable target: refused with an error, as expected"
