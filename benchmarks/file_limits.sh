#!/usr/bin/env bash
# Measures ferry-bench's file protocol (the uring transport, O_DIRECT) against fio (io_uring engine, O_DIRECT)
# on the same file with the same block size and queue depth, and against this disk's limit from
# ../shared/baselines/disk_limit (fio on a freshly laid-out file of the same size), in one run; prints a
# markdown table of medians and ratios (also the median of each run's ferry-bench/fio ratio).
# Usage: benchmarks/file_limits.sh BUILD_DIR DIR [runs=5] [seconds=5] [size=2G] [limit_runs=3]
#   DIR must be on the disk to measure (not a tmpfs); a file of `size` is created there and deleted afterwards.
set -euo pipefail
build=${1:?build directory with benchmarks/ferry-bench}
dir=${2:?directory on the disk to measure}
runs=${3:-5} secs=${4:-5} size=${5:-2G} limit_runs=${6:-3}
here=$(cd "$(dirname "$0")" && pwd)
baselines=${FERRY_BASELINES:-$here/../../shared/baselines}
bench=$build/benchmarks/ferry-bench
command -v fio >/dev/null || { echo "file_limits.sh: fio is missing (apt-get install -y fio)" >&2; exit 2; }
if [[ $(stat -f -c %T "$dir") == tmpfs ]]; then
  echo "file_limits.sh: $dir is a tmpfs; give a directory on the disk to measure" >&2
  exit 2
fi
file=$dir/ferry-file-limits.dat
trap 'rm -f "$file"' EXIT
bytes=$(numfmt --from=iec "$size")
dd if=/dev/zero of="$file" bs=1M count=$((bytes / 1048576)) oflag=direct status=none

median_text() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="-"]; print("%.1f" % statistics.median(v) if v else "-")' "$@"; }
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# fio exactly as disk_limit runs it, but on our file (kept between runs): prints "GB/s IOPS".
fio_same_file() {
  fio --name=same --filename="$file" --size="$size" --rw="$1" --bs="$2" --iodepth="$3" --ioengine=io_uring \
    --direct=1 --time_based --runtime="$secs" --group_reporting --output-format=json |
    python3 -c '
import json,sys
j=json.load(sys.stdin)["jobs"][0]
s=j["read"] if j["read"]["io_bytes"] else j["write"]
print(s["bw_bytes"]/1e9, s["iops"])'
}

# The block layer's counters of the disk under DIR: "reads read_merges writes write_merges" so far.
dev=$(stat -c %d "$dir")
stat_file=/sys/dev/block/$((dev >> 8 & 0xfff)):$((dev & 0xff | (dev >> 12 & 0xfff00)))/stat
counters() { if [[ -r $stat_file ]]; then awk '{print $1, $2, $5, $6}' "$stat_file"; else echo 0 0 0 0; fi; }
# Block I/Os per request the disk received between two counter readings ("-" if unknown): how much the block
# layer merged the reads or writes it was given.
per_request() {
  python3 -c '
import sys
a=[int(x) for x in sys.argv[1].split()]; b=[int(x) for x in sys.argv[2].split()]
r,m=(0,1) if sys.argv[3]!="write" else (2,3)
n=b[r]-a[r]; print("%.1f" % ((n+b[m]-a[m])/n) if n>0 else "-")' "$1" "$2" "$3"
}

echo "| operation | block | QD | ferry-bench GB/s | fio GB/s (same file) | median of paired ratios | ratio of medians | ferry-bench IOPS | fio IOPS | IOPS ratio | I/Os per request ferry-bench / fio | disk_limit GB/s | ferry-bench / disk_limit |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
row() {
  local op=$1 block=$2 depth=$3 fb=() fbi=() ff=() ffi=() fl=() pr=() mfb=() mff=() j g i b c0 c1
  for run in $(seq "$runs"); do
    # why: the disk's speed drifts (a shared virtual disk, host caching), and whether the block layer merges
    # adjacent requests flips with it; ferry-bench and fio run back to back, first one then the other, and
    # each pair gives a ratio measured under the same conditions
    for step in 0 1; do
      c0=$(counters)
      if (((run + step) % 2 == 0)); then
        j=$("$bench" --mode local --protocol file --file "$file" --operation "$op" --block-size "$block" \
          --queue-depth "$depth" --duration "$secs" --json)
        c1=$(counters)
        b=$(field throughput_gbps <<<"$j")
        fb+=("$b") fbi+=("$(field iops <<<"$j")") mfb+=("$(per_request "$c0" "$c1" "$op")")
      else
        read -r g i < <(fio_same_file "$op" "$block" "$depth")
        c1=$(counters)
        ff+=("$g") ffi+=("$i") mff+=("$(per_request "$c0" "$c1" "$op")")
      fi
    done
    pr+=("$(python3 -c "print(${fb[-1]} / ${ff[-1]})")")
  done
  # why: disk_limit lays out a fresh file (a burst of writes that can change how the disk behaves for a
  # while), so it runs after the pairs rather than between them
  for _ in $(seq "$limit_runs"); do
    j=$("$baselines/disk_limit" "$dir" "$op" "$block" "$depth" "$size" "$secs")
    fl+=("$(field gbps <<<"$j")")
  done
  local mb mbi mf mfi ml mp
  mb=$(median "${fb[@]}") mbi=$(median "${fbi[@]}") mf=$(median "${ff[@]}") mfi=$(median "${ffi[@]}")
  ml=$(median "${fl[@]}") mp=$(median "${pr[@]}")
  python3 -c "
b,bi,f,fi,l,p=$mb,$mbi,$mf,$mfi,$ml,$mp
print('| $op | $block | $depth | %.3f | %.3f | %.2f | %.2f | %.0f | %.0f | %.2f | $(median_text "${mfb[@]}") / $(median_text "${mff[@]}") | %.3f | %.2f |' % (b, f, p, b / f, bi, fi, bi / fi, l, b / l))"
  printf '  %s %s QD%s runs (GB/s): ferry-bench %s; fio %s; paired ratios %s; I/Os per request %s / %s; disk_limit %s\n' \
    "$op" "$block" "$depth" "$(printf '%.3f ' "${fb[@]}")" "$(printf '%.3f ' "${ff[@]}")" \
    "$(printf '%.2f ' "${pr[@]}")" "${mfb[*]}" "${mff[*]}" "$(printf '%.3f ' "${fl[@]}")" >&2
}
row read 1M 32
row read 64K 32
row write 1M 32
row write 64K 32
row randread 4K 64
echo
echo "medians of $runs pairs of $secs s runs (ferry-bench and fio back to back, alternating which goes first), then"
echo "$limit_runs disk_limit runs per row; a $size file in $dir ($(df --output=source "$dir" | tail -1))"
