#!/usr/bin/env bash
# Runs ferry-bench target/initiator pairs that find each other through every metadata backend: memory:// (both
# in one process), http:// (a ferry-metad process), etcd://, redis:// (real servers started here on random
# loopback ports) and p2p (the direct handshake). Each run verifies every byte and prints its JSON line.
set -euo pipefail
bench=${1:?path to ferry-bench}
metad=${2:?path to ferry-metad}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1"; exit 1
}
check() { # json backend
  python3 - "$1" "$2" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["bytes"] > 0 and j["throughput_gbps"] > 0, j
print(f'{sys.argv[2]}: {j["operation"]} {j["throughput_gbps"]:.2f} GB/s through {j["metadata"]}, verified')
PY
}
common=(--protocol tcp --block-size 64K --batch-size 16 --duration 0.3 --verify --json --no-progress)

# memory://: target and initiator in one process
check "$("$bench" --mode both --metadata memory://bench --segment mem-0 --buffer-size 16M --operation read "${common[@]}")" memory

# servers
etcd_port=$(free_port); etcd_peer=$(free_port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
  --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
metad_port=$(free_port)
"$metad" --listen "127.0.0.1:$metad_port" >"$work/metad.log" 2>&1 &
pids+=($!)
wait_port "$etcd_port"; wait_port "$redis_port"; wait_port "$metad_port"
for _ in $(seq 100); do # etcd accepts before it has a leader
  curl -sf -X POST "http://127.0.0.1:$etcd_port/v3/kv/range" -d '{"key":"AA=="}' >/dev/null && break
  sleep 0.1
done

for conn in "http://127.0.0.1:$metad_port" "etcd://127.0.0.1:$etcd_port/bench" "redis://127.0.0.1:$redis_port" p2p; do
  out="$work/target.out"
  "$bench" --mode target --listen 127.0.0.2:0 --buffer-size 16M --metadata "$conn" --segment seg-0 >"$out" 2>&1 &
  target=$!
  pids+=($target)
  for _ in $(seq 200); do grep -q "listening on" "$out" && break; sleep 0.05; done
  grep -q "listening on" "$out" || { cat "$out"; exit 1; }
  segment=seg-0
  [ "$conn" = p2p ] && segment=$(grep -o "127.0.0.2:[0-9]*" "$out")
  for op in write read; do
    check "$("$bench" --mode initiator --metadata "$conn" --segment "$segment" --operation "$op" "${common[@]}")" "$conn"
  done
  kill "$target"; wait "$target" 2>/dev/null || true
done

# a segment nobody published fails clearly
if "$bench" --mode initiator --metadata "etcd://127.0.0.1:$etcd_port/bench" --segment nobody --duration 0.3 \
  --no-progress 2>"$work/err"; then
  echo "opening an unknown segment must fail"; exit 1
fi
grep -q "nobody" "$work/err" || { cat "$work/err"; exit 1; }
echo "every backend: target and initiator found each other and verified every byte"
