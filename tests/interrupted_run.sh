# Sourced by the ferry-bench smoke tests: Ctrl-C in the middle of a measuring run.
# expect_interrupted_run PID FD_PATTERN SETTLE OUT ERR WHAT
#   waits until process PID holds a descriptor matching FD_PATTERN (its signal handler is installed before
#   that: a background job of a script starts with SIGINT ignored, so a signal before it would be lost),
#   waits SETTLE seconds more, sends SIGINT, and expects exit 0, word of the interruption in ERR and a JSON
#   report in OUT of some bytes measured in less than 20 s.
expect_interrupted_run() {
  local pid=$1 pattern=$2 settle=$3 out=$4 err=$5 what=$6
  for _ in $(seq 100); do
    ls -l /proc/"$pid"/fd 2>/dev/null | grep -q "$pattern" && break
    sleep 0.1
  done
  sleep "$settle"
  kill -INT "$pid"
  local rc=0
  wait "$pid" || rc=$?
  [[ $rc == 0 ]] || { echo "an interrupted $what run exited $rc: $(cat "$err")"; exit 1; }
  grep -q "interrupted" "$err" || { echo "no word of the interruption: $(cat "$err")"; exit 1; }
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["bytes"] > 0 and j["seconds"] < 20, j' \
    "$out"
}
