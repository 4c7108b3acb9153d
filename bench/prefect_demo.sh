#!/usr/bin/env bash
# The Prefect path end to end, on this machine, with nothing left behind:
#   1. a local Prefect server with its own PREFECT_HOME and SQLite database
#   2. `python -m flows.serve` with a 10 s schedule: a scheduled run fires and completes
#   3. the work-pool path: `prefect deploy --all`, a run of the retrain deployment,
#      a process worker picks it up and completes it
#   4. two flow runs started at once on one workspace: both complete, one after
#      the other, and dvc.lock and the outputs stay intact
#   5. `prefect flow-run ls`
#
#   bench/prefect_demo.sh [WORKSPACE]   # default: a fresh synthetic 10-stage DVC project
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
export PATH=$BIN:$PATH
DEMO=$(mktemp -d /tmp/fer-prefect-demo.XXXXXX)
PORT=${PORT:-4242}
export PREFECT_HOME=$DEMO/prefect
export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$DEMO/prefect.db"
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DEMO"
}
trap cleanup EXIT
say() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

# wait until the server has N completed flow runs (or fail after $2 s)
completed() {
  prefect flow-run ls --state-type COMPLETED --limit 100 -o json 2>/dev/null |
    python -c 'import json, sys; d = sys.stdin.read().strip(); print(len(json.loads(d)) if d.startswith("[") else 0)'
}
wait_completed() {
  local n=$1 deadline=$((SECONDS + $2))
  until [ "$(completed)" -ge "$n" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $n completed runs"; exit 1; }
    sleep 2
  done
}
export COLUMNS=140  # rich tables: full state names

say "1. local Prefect server on :$PORT, database $DEMO/prefect.db"
prefect server start --host 127.0.0.1 --port "$PORT" >"$DEMO/server.log" 2>&1 &
pids+=($!)
until curl -sf "$PREFECT_API_URL/health" >/dev/null; do sleep 1; done
echo "server up"

if [ $# -ge 1 ]; then
  WS=$(cd "$1" && pwd)
else
  WS=$DEMO/project
  python -c "import sys; sys.path.insert(0, '$ROOT/bench'); from flow_overhead import synthetic_project; from pathlib import Path; synthetic_project(Path('$WS'))"
fi
echo "workspace: $WS"

say "2. serve prefect.yaml's retrain deployment every 10 s (no work pool)"
cd "$ROOT"
python -m flows.serve --only retrain --interval 10 --workspace "$WS" >"$DEMO/serve.log" 2>&1 &
serve_pid=$!
pids+=($serve_pid)
wait_completed 1 240
kill "$serve_pid"   # a run in flight when serve stops is marked CANCELLED
echo "a scheduled run completed:"
grep -E "Beginning flow run|Flow run .* Finished in state" "$DEMO/serve.log" | head -2
prefect deployment delete fer-pipeline/retrain >/dev/null   # with its interval schedule

say "3. work pool + prefect deploy + worker"
prefect work-pool create fer-local --type process >/dev/null
prefect --no-prompt deploy --all
prefect deployment ls
prefect deployment inspect fer-pipeline/retrain | grep -A4 "'schedule': {"
done_before=$(completed)
prefect deployment run fer-pipeline/retrain --param workspace="\"$WS\"" | grep -i "created flow run"
prefect worker start --pool fer-local --run-once >"$DEMO/worker.log" 2>&1   # runs what is due, exits
grep -E "Flow run .* Finished in state" "$DEMO/worker.log"
wait_completed $((done_before + 1)) 60

say "4. two runs at once on one workspace"
sed -i 's/^  C: .*/  C: 0.5/' "$WS/params.yaml"   # the svm stage is stale now
lock_before=$(md5sum <"$WS/dvc.lock")
python -m flows.pipeline --workspace "$WS" >"$DEMO/a.out" 2>"$DEMO/a.err" &
a=$!
python -m flows.pipeline --workspace "$WS" >"$DEMO/b.out" 2>"$DEMO/b.err" &
b=$!
wait $a && wait $b
echo "run A: $(tail -1 "$DEMO/a.out")"
echo "run B: $(tail -1 "$DEMO/b.out")"
grep -h "is busy" "$DEMO/a.err" "$DEMO/b.err" | sed 's/^.*| //'
(cd "$WS" && dvc status && dvc repro | tail -1)
[ "$(md5sum <"$WS/dvc.lock")" != "$lock_before" ] && echo "dvc.lock updated once, for svm's new C"

say "5. prefect flow-run ls"
prefect flow-run ls --limit 10
