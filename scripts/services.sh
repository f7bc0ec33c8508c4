#!/usr/bin/env bash
# Start, stop or inspect the local platform services, each in the background
# with its pid and log under $CATDOG_RUN_DIR (default .run/):
#   MLflow tracking server (SQLite + local artifacts), Prefect server (SQLite),
#   a process work pool with one worker.
# Usage: scripts/services.sh up|serve|down|status
# `up` is idempotent: a service that already answers is left alone; `serve`
# restarts a running service so it loads the latest packaged model.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$CATDOG_ROOT"
mkdir -p "$CATDOG_RUN_DIR/logs" "$CATDOG_RUN_DIR/mlflow" "$PREFECT_HOME"

log() { printf '[services] %s\n' "$*"; }

alive() { [ -f "$CATDOG_RUN_DIR/$1.pid" ] && kill -0 "$(cat "$CATDOG_RUN_DIR/$1.pid")" 2>/dev/null; }

wait_http() { # name url seconds
  local deadline=$((SECONDS + $3))
  until curl -fs -o /dev/null "$2"; do
    if ! alive "$1"; then
      log "$1 exited during start-up; last lines of $CATDOG_RUN_DIR/logs/$1.log:"
      tail -n 20 "$CATDOG_RUN_DIR/logs/$1.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$1 did not answer at $2 within $3 s; see $CATDOG_RUN_DIR/logs/$1.log"
      return 1
    fi
    sleep 1
  done
}

start() { # name command...
  local name=$1; shift
  if alive "$name"; then log "$name already running (pid $(cat "$CATDOG_RUN_DIR/$name.pid"))"; return 0; fi
  # setsid: the service outlives this shell and can be stopped as a group.
  setsid "$@" >"$CATDOG_RUN_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$CATDOG_RUN_DIR/$name.pid"
  log "started $name (pid $!), log: $CATDOG_RUN_DIR/logs/$name.log"
}

stop() { # name signal
  local name=$1 signal=${2:-TERM}
  if alive "$name"; then
    local pid; pid=$(cat "$CATDOG_RUN_DIR/$name.pid")
    kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
    log "stopped $name"
  fi
  rm -f "$CATDOG_RUN_DIR/$name.pid"
}

up() {
  start mlflow mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$CATDOG_RUN_DIR/mlflow/mlflow.db" \
    --artifacts-destination "$CATDOG_RUN_DIR/mlflow/artifacts"
  start prefect-server prefect server start --host 127.0.0.1 --port "$PREFECT_PORT"
  wait_http prefect-server "http://127.0.0.1:$PREFECT_PORT/api/health" 120
  log "Prefect server healthy at http://127.0.0.1:$PREFECT_PORT"
  wait_http mlflow "http://127.0.0.1:$MLFLOW_PORT/health" 120
  log "MLflow server healthy at http://127.0.0.1:$MLFLOW_PORT"
  if ! prefect work-pool inspect "$CATDOG_WORK_POOL" >/dev/null 2>&1; then
    prefect work-pool create "$CATDOG_WORK_POOL" --type process >/dev/null
    log "created work pool $CATDOG_WORK_POOL"
  fi
  start worker prefect worker start --pool "$CATDOG_WORK_POOL"
}

serve() { # bentoml serve the packaged model in the background, wait for /readyz
  # A running service keeps the model it loaded: restart it so the latest
  # packaged champion is served (still one server, never two).
  if alive bento; then log "restarting bento to load the latest packaged model"; stop bento; fi
  start bento bentoml serve --host 127.0.0.1 --port "$BENTO_PORT"
  wait_http bento "http://127.0.0.1:$BENTO_PORT/readyz" 180
  log "service ready at http://127.0.0.1:$BENTO_PORT (POST /classify, docs at /)"
}

down() {
  stop worker INT  # a worker whose server is gone may ignore SIGTERM; SIGINT stops it
  stop bento
  stop prefect-server
  stop mlflow
}

status() {
  for name in mlflow prefect-server worker bento; do
    if alive "$name"; then echo "$name: running (pid $(cat "$CATDOG_RUN_DIR/$name.pid"))"
    else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  serve) serve ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|serve|down|status" >&2; exit 2 ;;
esac
