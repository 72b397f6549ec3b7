#!/usr/bin/env bash
# Runs ferry-p2p-demo as its acceptance asks: 4 peers through the embedded HTTP metadata service and through a
# real etcd (started here on random loopback ports), checking that every byte of every copy was verified; then
# again with one holder killed (SIGKILL) while the others pull from it: the fetches must still complete.
set -euo pipefail
demo=${1:?path to ferry-p2p-demo}
mode=${2:-all}
work=$(mktemp -d)
etcd_pid=
cleanup() {
  [ -n "$etcd_pid" ] && kill -9 "$etcd_pid" 2>/dev/null; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
check() { # json label [min-retries]
  python3 - "$1" "$2" "${3:-0}" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
for key in ("peers", "bytes", "seconds", "verified"):
    assert key in j, key
assert j["verified"] is True, j
assert j["retries"] >= int(sys.argv[3]), j
survivors = j["peers"] - len(j["killed"])
assert j["bytes"] == survivors * j["payload_bytes"], j
print(f'{sys.argv[2]}: {j["peers"]} peers, {j["bytes"]} bytes in {j["seconds"]:.3f} s, '
      f'{j["retries"]} retried pulls, killed {j["killed"]}, served {j["served"]}: verified')
PY
}

if [ "$mode" = all ] || [ "$mode" = http ]; then
  check "$(timeout 120 "$demo" --peers 4 --size 64M --shard-size 1M --json)" "embedded ferry-metad"
fi
if [ "$mode" = all ] || [ "$mode" = etcd ]; then
  port=$(free_port); peer=$(free_port)
  etcd --name p2p --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$port" \
    --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "p2p=http://127.0.0.1:$peer" \
    --log-level error >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 200); do
    curl -sf -X POST "http://127.0.0.1:$port/v3/kv/range" -d '{"key":"AA=="}' >/dev/null && break
    sleep 0.1
  done
  check "$(timeout 120 "$demo" --peers 4 --size 64M --shard-size 1M --metadata "etcd://127.0.0.1:$port" --json)" etcd
fi
if [ "$mode" = all ] || [ "$mode" = kill ]; then
  check "$(timeout 120 "$demo" --peers 4 --size 64M --shard-size 256K --kill-holder --json)" "holder killed" 1
fi
