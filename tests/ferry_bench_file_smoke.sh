#!/usr/bin/env bash
# Runs ferry-bench's file mode as a user would: sequential reads and writes and random reads of a temporary file
# through the uring transport, with --json (the fields BENCHMARKS.md relies on, iops included).
set -euo pipefail
bench=${1:?path to ferry-bench}
source "$(dirname "$0")/interrupted_run.sh"
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/ferry-bench-file-XXXXXX")
trap 'rm -rf "$dir"' EXIT
dd if=/dev/zero of="$dir/f.dat" bs=1M count=16 status=none
for run in "read 64K 8" "write 64K 8" "randread 4K 16"; do
  set -- $run
  json=$("$bench" --mode local --protocol file --file "$dir/f.dat" --operation "$1" --block-size "$2" \
    --queue-depth "$3" --duration 0.3 --json)
  python3 - "$json" "$1" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
for key in ("throughput_gbps", "iops", "bytes", "seconds", "batches", "queue_depth", "direct"):
    assert key in j, key
assert "p50" in j["latency_us"] and "p99" in j["latency_us"]
assert j["protocol"] == "file" and j["operation"] == sys.argv[2]
assert j["bytes"] > 0 and j["iops"] > 0
print(f'file {sys.argv[2]}: {j["throughput_gbps"]:.2f} GB/s, {j["iops"]:.0f} IOPS, direct={j["direct"]}')
PY
done
# a file named without --operation is read, never overwritten
printf 'kept as it was' | dd of="$dir/f.dat" conv=notrunc status=none
before=$(sha256sum <"$dir/f.dat")
json=$("$bench" --mode local --protocol file --file "$dir/f.dat" --block-size 64K --duration 0.3 --json)
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["operation"] == "read", j' "$json"
[[ $(sha256sum <"$dir/f.dat") == "$before" ]] || { echo "a run without --operation changed the file"; exit 1; }
echo "file without --operation: read, the file unchanged"
if "$bench" --mode local --protocol file --file "$dir/absent.dat" --operation read --duration 0.3 >/dev/null 2>&1; then
  echo "a missing file must fail"; exit 1
fi
# --verify has nothing to compare a file's content with: refused, not accepted and ignored
rc=0; err=$("$bench" --mode local --protocol file --file "$dir/f.dat" --operation read --duration 0.3 --verify 2>&1 \
  >/dev/null) || rc=$?
[[ $rc == 2 ]] && grep -q "not --protocol file" <<<"$err" || { echo "file --verify: exit $rc ($err)"; exit 1; }
echo "file --verify: refused, as expected"
# Ctrl-C in the middle of a run: what was measured is reported, and the run exits 0
out="$dir/interrupted"
"$bench" --mode local --protocol file --file "$dir/f.dat" --operation read --block-size 64K --queue-depth 4 \
  --duration 30 --json >"$out" 2>"$out.err" &
# the handler is installed before the file is opened; then a moment for the warm-up to end
expect_interrupted_run $! 'f.dat' 1 "$out" "$out.err" file
echo "interrupted file run: what was measured is reported"
