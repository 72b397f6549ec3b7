#!/usr/bin/env bash
# Runs ferry-bench as a user would: a target on 127.0.0.2, then short initiator runs over tcp and shm, reading
# and writing, with --verify (every byte checked end to end) and --json (the fields BENCHMARKS.md relies on).
set -euo pipefail
bench=${1:?path to ferry-bench}
source "$(dirname "$0")/interrupted_run.sh"
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
assert j["bytes"] > 0 and j["throughput_gbps"] > 0 and j["verify"]
# every byte went the way the protocol names: the figures are that transport's
other = "tcp" if sys.argv[2] == "shm" else "shm"
assert j["routed_bytes"][other] == 0, j["routed_bytes"]
assert j["routed_bytes"][sys.argv[2]] >= j["bytes"], (j["routed_bytes"], j["bytes"])
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
if err=$("$bench" --mode initiator --target "$target" --protocol tcp --block-size 64K --tcp-congestion no-such-algorithm \
  --duration 0.3 2>&1 >/dev/null); then
  echo "a congestion control the kernel lacks must fail the run"; exit 1
fi
grep -q 'no-such-algorithm' <<<"$err" || { echo "the error must name the algorithm: $err"; exit 1; }
echo "unknown congestion control: refused with the reason, as expected"
# expect_exit CODE TEXT COMMAND...: the command exits with CODE and says TEXT on stderr
expect_exit() {
  local code=$1 text=$2 rc=0 err
  shift 2
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc == "$code" ]] || { echo "exit $rc, expected $code: $* ($err)"; exit 1; }
  grep -q -- "$text" <<<"$err" || { echo "stderr lacks '$text': $err"; exit 1; }
  echo "exit $code with '$text', as expected: ${*:2}"
}
expect_exit 1 "cannot open the target segment" \
  "$bench" --mode initiator --target 127.0.0.2:1 --protocol tcp --duration 0.5
expect_exit 2 "block-size must be at least 1" "$bench" --mode initiator --target "$target" --block-size 0
expect_exit 2 "duration must be more than 0" "$bench" --mode initiator --target "$target" --duration 0
# 64 MiB hold 64 blocks of 1 MiB: a batch of 128 would share target blocks
expect_exit 2 "fewer than a batch of 128" \
  "$bench" --mode initiator --target "$target" --block-size 1M --batch-size 128 --duration 0.3
# ... and asking for 128 distinct target blocks where 64 fit is refused, not cut down to 64 shared ones
expect_exit 2 "remote-blocks 128: the target's region" \
  "$bench" --mode initiator --target "$target" --block-size 1M --batch-size 128 --remote-blocks 128 --verify \
  --duration 0.3
expect_exit 2 "cannot hold one block" "$bench" --mode initiator --target "$target" --block-size 128M --batch-size 1 \
  --duration 0.3
expect_exit 2 "would stop the target at once" "$bench" --mode target --listen 127.0.0.2:0 --duration 0
# slices larger than a frame carries are refused, not quietly cut down and reported as asked
expect_exit 2 "not in range" "$bench" --mode initiator --target "$target" --slice-size 256M --duration 0.3

# Ctrl-C during a write run: the initiator stops, writes the target's fill pattern back, reports what it
# measured and exits 0; a read --verify against the target then passes.
"$bench" --mode initiator --target "$target" --protocol tcp --operation write --block-size 64K --batch-size 16 \
  --duration 30 --json >"$out.interrupted" 2>"$out.interrupted.err" &
# the handler is installed before the first connection
expect_interrupted_run $! 'socket:' 0.5 "$out.interrupted" "$out.interrupted.err" write
"$bench" --mode initiator --target "$target" --protocol tcp --operation read --block-size 64K --batch-size 16 \
  --duration 0.3 --verify --json >/dev/null
rm -f "$out.interrupted" "$out.interrupted.err"
echo "interrupted write run: measured, restored, and a read --verify afterwards passes"

# The table, piped: no progress line (no carriage return, no erase sequence), the columns and one row.
table=$("$bench" --mode initiator --target "$target" --protocol tcp --operation read --block-size 64K \
  --batch-size 16 --duration 0.3 | cat)
if grep -q $'[\r\033]' <<<"$table"; then echo "a progress line was printed into a pipe: $table"; exit 1; fi
grep -q "GB/s.*batches/s.*p50_us.*p99_us" <<<"$table" || { echo "no table header: $table"; exit 1; }
grep -qE "^tcp +read +65536 +16 " <<<"$table" || { echo "no table row: $table"; exit 1; }
echo "table through a pipe: header and row, no progress line"

# --verify catches content that is not what the target should hold: a write run that leaves its pattern in
# place (--no-restore), then a read that expects the target's fill pattern, fails with exit 3.
"$bench" --mode initiator --target "$target" --protocol tcp --operation write --block-size 64K --batch-size 16 \
  --duration 0.2 --no-restore --json >/dev/null
expect_exit 3 "verify failed (read" "$bench" --mode initiator --target "$target" --protocol tcp --operation read \
  --block-size 64K --batch-size 16 --duration 0.2 --verify --json
