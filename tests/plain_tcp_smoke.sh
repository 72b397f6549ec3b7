#!/usr/bin/env bash
# Runs ferry-plain-tcp as benchmarks/transfer_limits.sh does (one and several streams, distinct and reused
# blocks, a chosen congestion control) and checks what it reports; a bad option must be refused.
set -euo pipefail
tool=${1:?path to ferry-plain-tcp}
check() { # expected streams, blocks, congestion ("" for any), then the tool's JSON
  python3 - "$@" <<'PY'
import json, sys
streams, blocks, cc, line = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
j = json.loads(line)
assert j["streams"] == streams and j["blocks"] == blocks, j
assert j["bytes"] > 0 and j["seconds"] > 0 and j["gbps"] > 0, j
assert abs(j["gbps"] - j["bytes"] / j["seconds"] / 1e9) < 0.01 * j["gbps"] + 0.001, j
assert j["bytes"] % j["block_size"] == 0, "the receiver must end on whole messages"
if cc:
    assert j["congestion"] == cc, j
print(f'{streams} stream(s), {blocks} block(s), {j["congestion"]}: {j["gbps"]:.2f} GB/s')
PY
}
check 1 8 "" "$("$tool" --streams 1 --block-size 64K --blocks 8 --duration 0.3)"
check 4 1 "" "$("$tool" --streams 4 --block-size 1M --blocks 1 --duration 0.3 --address 127.0.0.2)"
check 2 16 reno "$("$tool" --streams 2 --block-size 256K --blocks 16 --duration 0.3 --congestion reno)"
# A standing receive low-water mark above a message, and replies: whole messages still arrive, none is stranded.
out=$("$tool" --streams 2 --block-size 1M --blocks 4 --duration 0.3 --low-water 1536K --reply-size 32)
check 2 4 "" "$out"
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["low_water"] == 1536 << 10 and j["reply_size"] == 32 and j["replies_dropped"] >= 0, j' "$out"
# Large replies to small messages outrun what the sender drains: some are dropped, and nothing waits for ever.
out=$(timeout 20 "$tool" --streams 2 --block-size 4K --blocks 4 --duration 0.5 --reply-size 4096)
check 2 4 "" "$out"
if err=$("$tool" --congestion no-such-algorithm --duration 0.2 2>&1); then
  echo "an unknown congestion control must fail"; exit 1
fi
grep -q "no-such-algorithm" <<<"$err" || { echo "the error must name it: $err"; exit 1; }
if "$tool" --streams 0 >/dev/null 2>&1; then echo "--streams 0 must be refused"; exit 1; fi
if "$tool" --reply-size 5000 >/dev/null 2>&1; then echo "--reply-size 5000 must be refused"; exit 1; fi
echo "bad options: refused, as expected"
