# Defaults for every command of the platform; source it (`. scripts/env.sh`).
# Each value can be overridden by exporting it before. Derived values (URLs,
# state folders) follow the ports and CATDOG_RUN_DIR unless set themselves.
CATDOG_ROOT=${CATDOG_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export CATDOG_ROOT
export CATDOG_RUN_DIR=${CATDOG_RUN_DIR:-$CATDOG_ROOT/.run}
export PREFECT_PORT=${PREFECT_PORT:-4200}
export MLFLOW_PORT=${MLFLOW_PORT:-5000}
export BENTO_PORT=${BENTO_PORT:-3000}
export PREFECT_HOME=${PREFECT_HOME:-$CATDOG_RUN_DIR/prefect}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}
# HAProxy's second frontend, 127.0.0.1 only: the platform's own traffic (evaluate
# flow, benchmarks), which keeps its X-Catdog-Source; clients use BENTO_PORT.
export CATDOG_PLATFORM_PORT=${CATDOG_PLATFORM_PORT:-$((BENTO_PORT + 1))}
export CATDOG_SERVICE_URL=${CATDOG_SERVICE_URL:-http://127.0.0.1:$CATDOG_PLATFORM_PORT}
export BENTOML_HOME=${BENTOML_HOME:-$CATDOG_RUN_DIR/bentoml}
# --- PROFILE=scale (`make up PROFILE=scale`): the multi-machine shape on one machine ---
# PostgreSQL for Prefect, MLflow and the inference log, MLflow serving the
# artifacts, two workers, Prometheus + Pushgateway (README "Scaling beyond one
# machine"). The default profile keeps SQLite files and one worker.
export CATDOG_PROFILE=${CATDOG_PROFILE:-${PROFILE:-default}}
export CATDOG_PG_PORT=${CATDOG_PG_PORT:-5433}
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
export PUSHGATEWAY_PORT=${PUSHGATEWAY_PORT:-9091}
if [ "$CATDOG_PROFILE" = scale ]; then
    # The cluster under $CATDOG_RUN_DIR/postgres listens on 127.0.0.1 only; each
    # database has its own role, whose password is in $PGPASSFILE (below), not in
    # these URLs. A managed PostgreSQL takes its own URLs (deploy/k8s/README.md).
    _pg=127.0.0.1:$CATDOG_PG_PORT
    export PREFECT_SERVER_DATABASE_CONNECTION_URL=${PREFECT_SERVER_DATABASE_CONNECTION_URL:-postgresql+asyncpg://prefect@$_pg/prefect}
    export CATDOG_MLFLOW_BACKEND_URI=${CATDOG_MLFLOW_BACKEND_URI:-postgresql+psycopg://mlflow@$_pg/mlflow}
    export CATDOG_INFERENCE_LOG=${CATDOG_INFERENCE_LOG:-postgresql://inference_log@$_pg/catdog}
    export CATDOG_PUSHGATEWAY_URL=${CATDOG_PUSHGATEWAY_URL:-http://127.0.0.1:$PUSHGATEWAY_PORT}
    export PREFECT_SERVER_METRICS_ENABLED=${PREFECT_SERVER_METRICS_ENABLED:-true}
    unset _pg
fi

# --- secrets (README "Security"): made on first use, owner-only, never in argv -----
# Each is a file in $CATDOG_SECRETS_DIR (0700 folder, 0600 files); servers and
# clients read them from their environment, which only their owner can read.
export CATDOG_SECRETS_DIR=${CATDOG_SECRETS_DIR:-$CATDOG_RUN_DIR/secrets}
catdog_secret() {  # NAME -> the secret's value; made (random, 32 characters) if missing
    local file=$CATDOG_SECRETS_DIR/$1
    if [ ! -s "$file" ]; then
        (
            umask 077
            # A run dir made here is 0700 (umask); an existing one keeps its mode, which
            # catdog_runtime.services sets (0710 for PostgreSQL's group when run as root).
            mkdir -p "$CATDOG_SECRETS_DIR" && chmod 700 "$CATDOG_SECRETS_DIR"
            head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$file.$$"
            mv "$file.$$" "$file"
        )
    fi
    cat "$file"
}
# --- Prefect API authentication (README "Security", "### Prefect") ---------------
# The server asks every request for this basic-auth string ("user:password"); every
# client (worker, flow runs, CLI, catdog_runtime) sends it. The UI's own origin is
# the only one allowed cross-origin calls, and state-changing calls need a CSRF token
# (Prefect's client and UI fetch one themselves; catdog_runtime.prefect_api too).
export PREFECT_SERVER_API_AUTH_STRING=${PREFECT_SERVER_API_AUTH_STRING:-catdog:$(catdog_secret prefect-api)}
export PREFECT_API_AUTH_STRING=${PREFECT_API_AUTH_STRING:-$PREFECT_SERVER_API_AUTH_STRING}
export PREFECT_SERVER_CSRF_PROTECTION_ENABLED=${PREFECT_SERVER_CSRF_PROTECTION_ENABLED:-true}
export PREFECT_SERVER_CORS_ALLOWED_ORIGINS=${PREFECT_SERVER_CORS_ALLOWED_ORIGINS:-http://127.0.0.1:$PREFECT_PORT}
# --- PostgreSQL roles, Prometheus + Pushgateway basic auth (scale profile; README "Security") ---
if [ "$CATDOG_PROFILE" = scale ]; then
    # One password per PostgreSQL role (catdog: the admin; catdog_runtime/postgres.py), in a
    # 0600 pgpass file that libpq (MLflow, the inference log, psql) and asyncpg (Prefect) read.
    export PGPASSFILE=${PGPASSFILE:-$CATDOG_SECRETS_DIR/pgpass}
    if [ "$PGPASSFILE" = "$CATDOG_SECRETS_DIR/pgpass" ]; then
        _pgpass=$(for _role in catdog prefect mlflow inference_log; do
            echo "127.0.0.1:*:*:$_role:$(catdog_secret "postgres-$_role")"
        done)
        (umask 077 && echo "$_pgpass" >"$PGPASSFILE.$$" && mv -f "$PGPASSFILE.$$" "$PGPASSFILE")
        unset _pgpass _role
    fi
    # User `catdog` on Prometheus and the Pushgateway (their web configs hold its bcrypt hash).
    export CATDOG_MONITORING_PASSWORD=${CATDOG_MONITORING_PASSWORD:-$(catdog_secret monitoring)}
fi
# --- MLflow: the basic-auth app (issue #21; README "Security" > "MLflow") ------
# `make up` writes MLflow's auth config (owner-only, beside the secrets: it holds the
# admin password); every client (flows, worker, scripts, tests) logs in as that admin.
export MLFLOW_TRACKING_USERNAME=${MLFLOW_TRACKING_USERNAME:-admin}
export MLFLOW_TRACKING_PASSWORD=${MLFLOW_TRACKING_PASSWORD:-$(catdog_secret mlflow-admin-password)}
export MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$CATDOG_SECRETS_DIR/mlflow-auth.ini}
# Signs the auth app's CSRF tokens (its sign-up page); the same across MLflow's workers.
export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(catdog_secret mlflow-flask-secret-key)}
export CATDOG_INFERENCE_LOG=${CATDOG_INFERENCE_LOG:-$CATDOG_RUN_DIR/inference_log.sqlite}
export CATDOG_WORK_POOL=${CATDOG_WORK_POOL:-local}
# How long `make up` / `make serve` wait for a service to become healthy: cold starts
# on slow machines take minutes (README, "Set-up time"); a real error fails at once.
export CATDOG_START_TIMEOUT=${CATDOG_START_TIMEOUT:-600}
export PATH="$CATDOG_ROOT/.venv/bin:$PATH"

# --- what the platform costs on 2 cores (README "Platform overhead") ---------
export PREFECT_SERVER_ANALYTICS_ENABLED=false  # no telemetry: only package registries are reachable
# MLflow: uvicorn workers (its supervisor kills workers slow to import mlflow)
export MLFLOW_WORKERS=${MLFLOW_WORKERS:-1}
# MLflow 3's job runner (7 huey processes) serves features this project does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
# Prefect server loops that poll the database every few seconds; a minute is
# timely for one team's runs (a late run is flagged a minute later, at worst).
export PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS:-60}
export PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS:-60}
export PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS:-60}
export PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS:-60}
export PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS:-60}
export PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS:-60}
# The worker asks for runs to start every 2 s instead of Prefect's 10, so a run
# created by a person, a schedule or an automation is picked up within 2 s; the cost
# is one small query every 2 s.
export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-2}
# The scheduler's fast loop for just-created deployments (default 5 s).
export PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS=${PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS:-30}

# --- the closed loop (README "Closing the loop") ------------------------------
# The one switch: `make loop-off` / `make loop-on` store it in $CATDOG_RUN_DIR/loop
# and re-deploy; every automation of prefect.yaml gets `enabled` from it.
CATDOG_LOOP=${CATDOG_LOOP:-$(cat "$CATDOG_RUN_DIR/loop" 2>/dev/null || echo on)}
case "$CATDOG_LOOP" in off | false | 0) CATDOG_LOOP_ENABLED=false ;; *) CATDOG_LOOP_ENABLED=true ;; esac
export CATDOG_LOOP CATDOG_LOOP_ENABLED
# An alarm starts at most one retraining per cool-down (ISO 8601 duration).
export CATDOG_RETRAIN_COOLDOWN=${CATDOG_RETRAIN_COOLDOWN:-PT6H}
# A new bento is rolled out this long after it is built: the window to cancel it.
export CATDOG_ROLLOUT_DELAY=${CATDOG_ROLLOUT_DELAY:-PT10M}
# Where `ingest/labelled` adds photos, and the DVC remote it pushes the new version to
# (`make dvc-remote` configures a local one; ../shared/dvc-store is read-only).
export CATDOG_DATA_DIR=${CATDOG_DATA_DIR:-$CATDOG_ROOT/data}
export CATDOG_DVC_REMOTE=${CATDOG_DVC_REMOTE:-catdog-local}
