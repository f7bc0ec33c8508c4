# Defaults for every command of the platform; source it (`. scripts/env.sh`).
# Each value can be overridden by exporting it before.
CATDOG_ROOT=${CATDOG_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export CATDOG_ROOT
export CATDOG_RUN_DIR=${CATDOG_RUN_DIR:-$CATDOG_ROOT/.run}
export PREFECT_PORT=${PREFECT_PORT:-4200}
export MLFLOW_PORT=${MLFLOW_PORT:-5000}
export BENTO_PORT=${BENTO_PORT:-3000}
export PREFECT_HOME=${PREFECT_HOME:-$CATDOG_RUN_DIR/prefect}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}
export PREFECT_SERVER_ANALYTICS_ENABLED=false  # no telemetry: only package registries are reachable
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}
export BENTOML_HOME=${BENTOML_HOME:-$CATDOG_RUN_DIR/bentoml}
export CATDOG_INFERENCE_LOG=${CATDOG_INFERENCE_LOG:-$CATDOG_RUN_DIR/inference_log.sqlite}
export CATDOG_WORK_POOL=${CATDOG_WORK_POOL:-local}
export PATH="$CATDOG_ROOT/.venv/bin:$PATH"
