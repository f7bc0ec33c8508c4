"""Serving benchmark: raw ONNX Runtime ceiling vs. the BentoML service vs. a naive PyTorch server.

In one run on one machine, one server at a time:
  1. the raw ONNX Runtime model's images/s at batch 1 (the ceiling), with the
     ONNX file the service serves (from the BentoML store): one session with
     1 thread, with one thread per core, and a 1-thread session called from
     one thread per core at once; measured before and after the servers, the
     ceiling is the best figure;
  2. the service (`bentoml serve`, started here unless --url is given):
     images/s and latency p50/p95/p99 with 1, 4 and 16 concurrent clients
     posting real JPEGs from test_images/ as multipart uploads;
  3. the same load against bench/naive_server.py (FastAPI + eager PyTorch,
     one forward per request), with the champion's `pytorch_model` from MLflow.

With --compare-tag (repeatable), step 2 also serves each of those BentoML models in
turn, right after the measured one in every round, and the report gives each one's
throughput as a share of the measured model's: two models compared in the same run
(e.g. the Lite2 default against `train/efficientnet-lite0`).

Load comes from `wrk` with a Lua script building multipart bodies (`apt-get
install wrk`): it costs the 2 cores far less than a Python client. Without
wrk, or with --load python, an asyncio httpx client is used and the table
says so (its own CPU use then lowers the figures).

    . scripts/env.sh && python -m bench.serving --duration 10 --clients 1,4,16 --repeat 3

On a machine shared with other work, use --repeat 3: servers then alternate
in rounds, each ratio is taken within a round (figures measured minutes
apart do not compare) and the median over rounds is reported.

Needs the model in the BentoML store ($BENTOML_HOME) and, for the naive
server, the MLflow server holding the champion's run ($MLFLOW_TRACKING_URI);
--no-naive skips that part. Everything binds to 127.0.0.1; every server
started here is stopped before the next one starts and on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bentoml
import httpx

from catdog_runtime.processes import BIN, ROOT, Server, free_port, start_server
from model_lib.client import Answer, classify, classify_all, metric_samples, metric_total
from model_lib.config import MODEL_NAME
from model_lib.inference_log import BENCHMARK_SOURCE
from model_lib.onnx_model import OnnxClassifier
from model_lib.preprocess import prepare

BOUNDARY = "catdogbench0f9a8b7c6d5e4f3a"
SOURCE = BENCHMARK_SOURCE  # X-Catdog-Source: not user traffic, not in the drift window
GOALS = {"service_over_ceiling": 0.60, "service_over_naive": 5.0, "p50_1_client_ms": 15.0}


@dataclass
class LoadResult:
    server: str
    clients: int
    requests: int
    seconds: float
    errors: int  # non-2xx answers plus socket errors and timeouts
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None = None  # the service's catdog_batch_size over this run
    round: int = 0

    @property
    def rps(self) -> float:
        """Successful answers per second."""
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- servers
# ---------------------------------------------------------------- load generators
WRK_SCRIPT = """
local files = {%(files)s}
local boundary = "%(boundary)s"
local bodies = {}
local index = 0
local statuses = {}

function init(args)
  for i, path in ipairs(files) do
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    bodies[i] = "--" .. boundary .. "\\r\\n"
      .. 'Content-Disposition: form-data; name="image"; filename="photo.jpg"\\r\\n'
      .. "Content-Type: image/jpeg\\r\\n\\r\\n" .. data .. "\\r\\n--" .. boundary .. "--\\r\\n"
  end
end

function request()
  index = index %% #bodies + 1
  return wrk.format("POST", "%(path)s", {
    ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
    ["X-Catdog-Source"] = "%(source)s",
  }, bodies[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, '
    .. '"p50_us": %%d, "p95_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def run_wrk(base_url: str, files: list[Path], clients: int, duration: float, work: Path) -> dict:
    script = work / "multipart.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "files": ", ".join(json.dumps(str(f)) for f in files),
            "boundary": BOUNDARY,
            "path": "/classify",
            "source": SOURCE,
        }
    )
    result = subprocess.run(
        [
            "wrk",
            "-t1",  # one load thread keeps the load generator's CPU share small
            f"-c{clients}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT "))
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "errors": raw["errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def run_python_load(base_url: str, files: list[Path], clients: int, duration: float) -> dict:
    """Closed-loop load from `clients` asyncio clients (model_lib.client)."""
    payloads = [f.read_bytes() for f in files]

    async def client(http, deadline, answers: list[Answer], offset):
        index = offset
        while time.perf_counter() < deadline:
            payload = payloads[index % len(payloads)]
            answers.append(await classify(http, base_url, payload, source=SOURCE))
            index += 1

    async def main():
        answers: list[Answer] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=10, limits=limits) as http:
            started = time.perf_counter()
            deadline = started + duration
            await asyncio.gather(*(client(http, deadline, answers, i) for i in range(clients)))
            return answers, time.perf_counter() - started

    answers, seconds = asyncio.run(main())
    cuts = statistics.quantiles([a.latency_ms for a in answers], n=100, method="inclusive")
    return {
        "requests": len(answers),
        "seconds": seconds,
        "errors": sum(a.status != 200 for a in answers),
        "p50_ms": cuts[49],
        "p95_ms": cuts[94],
        "p99_ms": cuts[98],
    }


def metric_sums(base_url: str, *names: str) -> dict[str, float] | None:
    """Values of the service's Prometheus samples `names`, summed over label sets."""
    samples = metric_samples(base_url)
    if not all(any(sample == name for sample, _ in samples) for name in names):
        return None
    return {name: metric_total(samples, name) for name in names}


def batch_stats(base_url: str) -> tuple[float, float] | None:
    """(sum, count) of the service's catdog_batch_size histogram."""
    sums = metric_sums(base_url, "catdog_batch_size_sum", "catdog_batch_size_count")
    return (sums["catdog_batch_size_sum"], sums["catdog_batch_size_count"]) if sums else None


def check_answers(name: str, base_url: str, photo: Path) -> dict:
    """One request first: a server that answers errors would benchmark its error path."""
    (answer,) = classify_all(base_url, [(photo.name, photo.read_bytes())], SOURCE)
    if answer.status != 200:
        raise RuntimeError(f"{name} answered {answer.status}: {answer.error}")
    return answer.body


def measure(
    name, base_url, files, clients_list, duration, load, work, expect_version=None, round_index=0
) -> list[LoadResult]:
    answer = check_answers(name, base_url, files[0])
    served = answer.get("model", {}).get("version")
    if expect_version is not None and served != expect_version:
        print(
            f"  WARNING: {name} serves model version {served}, the ceiling was measured on "
            f"version {expect_version}: the ratios compare different models",
            flush=True,
        )
    results = []
    # A short warm-up: first requests pay for lazy imports and connection set-up.
    warm = min(2.0, duration)
    if load == "wrk":
        run_wrk(base_url, files, 2, warm, work)
    else:
        run_python_load(base_url, files, 2, warm)
    for clients in clients_list:
        before = batch_stats(base_url) if name == "service" else None
        if load == "wrk":
            raw = run_wrk(base_url, files, clients, duration, work)
        else:
            raw = run_python_load(base_url, files, clients, duration)
        mean_batch = None
        if before is not None:
            after = batch_stats(base_url)
            calls = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / calls if calls else None
        result = LoadResult(name, clients, mean_batch=mean_batch, round=round_index, **raw)
        print(
            f"  {name:8s} {clients:3d} clients: {result.rps:7.1f} req/s  p50 {result.p50_ms:6.1f} "
            f"ms  p99 {result.p99_ms:6.1f} ms  errors {result.errors}",
            flush=True,
        )
        results.append(result)
    return results


# ---------------------------------------------------------------- the three measurements
def _images_per_second(model, inputs, callers: int, duration: float) -> float:
    """`callers` Python threads calling predict_proba at batch 1 for `duration` seconds."""
    counts = [0] * callers
    stop = time.perf_counter() + duration

    def call(slot: int) -> None:
        done = 0
        while time.perf_counter() < stop:
            model.predict_proba(inputs[(done * callers + slot) % len(inputs)])
            done += 1
        counts[slot] = done

    started = time.perf_counter()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def raw_ceiling(onnx_path: Path, files: list[Path], duration: float) -> dict[str, float]:
    """Images/s of OnnxClassifier.predict_proba at batch 1 on preprocessed test photos.

    Three layouts, each for `duration` seconds: one session with 1 thread, one
    session with a thread per core (ONNX Runtime's default), and one 1-thread
    session called from one Python thread per core at once (what the service
    does). The ceiling is the best of them.
    """
    cores = len(os.sched_getaffinity(0))
    rates = {}
    layouts = (
        ("1 session, 1 thread", 1, 1),
        (f"1 session, {cores} threads", 0, 1),
        (f"1-thread session, {cores} parallel calls", 1, cores),
    )
    for label, threads, callers in layouts:
        model = OnnxClassifier(onnx_path, threads=threads)
        inputs = [prepare(f.read_bytes(), model.preprocessing)[1][None] for f in files]
        for x in inputs[:20]:
            model.predict_proba(x)
        rates[label] = _images_per_second(model, inputs, callers, duration)
        print(f"  {label}: {rates[label]:.1f} img/s", flush=True)
        del model
    return rates


def service_env(bentoml_home: str | None, work: Path) -> dict:
    env = {**os.environ, "CATDOG_INFERENCE_LOG": str(work / "inference_log.sqlite")}
    if bentoml_home:
        env["BENTOML_HOME"] = bentoml_home
    return env


def _start(name: str, args: list[str], env: dict, port: int, work: Path, timeout: float):
    """Start a server and wait for its /readyz; stopped again if it never gets ready."""
    url = f"http://127.0.0.1:{port}/readyz"
    return start_server(name, args, work / f"{name}.log", env, url, timeout)


def start_service(port: int, env: dict, work: Path, timeout: float) -> Server:
    args = ["serve", "bento.service:CatDogClassifier", "--host", "127.0.0.1", "--port", str(port)]
    return _start("service", [str(BIN / "bentoml"), *args], env, port, work, timeout)


def start_naive(port: int, model_uri: str, work: Path, timeout: float) -> Server:
    args = [str(ROOT / "bench" / "naive_server.py"), "--model-uri", model_uri, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return _start("naive", [sys.executable, *args], env, port, work, timeout)


def champion_model_tag() -> str:
    """The BentoML model `make package` made from the champion (its `bentoml_model` tag).
    Fails at once when MLflow does not answer."""
    from mlflow import MlflowClient

    from model_lib.config import CHAMPION_ALIAS
    from model_lib.tracking import ServiceUnavailable, ensure_tracking_server, version_by_alias

    try:
        ensure_tracking_server()
    except ServiceUnavailable as error:
        raise SystemExit(f"{error} (or pass --model-tag and --no-naive)") from None
    champion = version_by_alias(MlflowClient(), MODEL_NAME, CHAMPION_ALIAS)
    if champion is None or not champion.tags.get("bentoml_model"):
        raise SystemExit(
            f"no packaged champion of {MODEL_NAME} in MLflow: `make train package` first, "
            "or pass --model-tag"
        )
    return champion.tags["bentoml_model"]


def measure_stored(name, stored, run_levels, work, timeout, round_index):
    """`bentoml serve` of one stored model on a free port, loaded by `run_levels` (measure
    with this run's photos, clients and duration) as the service is."""
    port = free_port()
    env = service_env(os.environ.get("BENTOML_HOME"), work)
    env["CATDOG_MODEL_TAG"] = str(stored.tag)
    server = start_service(port, env, work, timeout)
    try:
        version = str(stored.info.metadata.get("mlflow_model_version"))
        return run_levels(
            name, f"http://127.0.0.1:{port}", expect_version=version, round_index=round_index
        )
    finally:
        server.stop()


def stored_model(tag: str):
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise SystemExit(
            f"no model {tag!r} in the BentoML store at {home}: run `make package` "
            "(prefect deployment run package/champion) first, or set BENTOML_HOME"
        ) from None


# ---------------------------------------------------------------- report
def compare_ratios(find: dict, rounds: list[int], name: str, tag: str, top: int) -> dict:
    """A compared model's throughput over the measured one's at `top` clients, and its
    p50 at 1 client, each taken within a round, medians over rounds."""
    over = [
        find[(name, top, i)].rps / find[("service", top, i)].rps
        for i in rounds
        if (name, top, i) in find and ("service", top, i) in find
    ]
    p50_one = [find[(name, 1, i)].p50_ms for i in rounds if (name, 1, i) in find]
    figures = {"model": tag}
    if over:
        figures["throughput_over_service"] = statistics.median(over)
        print(
            f"{name} ({tag}) / service at {top} clients: "
            f"{figures['throughput_over_service']:.0%}{_spread([100 * v for v in over], '.0f')}"
        )
    if p50_one:
        figures["p50_1_client_ms"] = statistics.median(p50_one)
        print(f"{name} p50 at 1 client: {figures['p50_1_client_ms']:.1f} ms")
    return figures


def median_results(results: list[LoadResult]) -> list[LoadResult]:
    """Per (server, clients), the round with the median throughput (all its figures)."""
    groups: dict[tuple[str, int], list[LoadResult]] = {}
    for r in results:
        groups.setdefault((r.server, r.clients), []).append(r)
    return [sorted(group, key=lambda r: r.rps)[(len(group) - 1) // 2] for group in groups.values()]


def _spread(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return ""
    return f" (rounds: {', '.join(format(v, fmt) for v in values)})"


def report(
    ceilings: list[dict],
    all_results: list[LoadResult],
    load: str,
    model: str,
    compared: dict[str, str] | None = None,
) -> dict:
    """Print the figures and the ratios; returns them as a dict.

    Ratios are taken within each round (the service against the ceiling measured
    just before it, and against the naive server right after it), then the
    median over rounds: on a shared machine, figures measured close together
    are the ones that compare.
    """
    rounds = sorted({r.round for r in all_results})
    table = median_results(all_results)
    round_ceiling = {i: max(ceilings[i].values()) for i in rounds}
    find = {(r.server, r.clients, r.round): r for r in all_results}

    print()
    print(f"model {model}; load generator: {load}; one server at a time on this machine")
    labels = list(ceilings[0])
    names = [f"round {i + 1}" for i in rounds] + (["after"] if len(ceilings) > len(rounds) else [])
    print("raw ONNX Runtime, batch 1, img/s: " + " | ".join(names))
    for label in labels:
        print(f"  {label}: " + " | ".join(f"{c[label]:.1f}" for c in ceilings))
    if len(rounds) > 1:
        print(f"table: per row, the median-throughput round of {len(rounds)}")
    print()
    header = (
        f"{'server':8s} {'clients':>7s} {'img/s':>8s} {'p50 ms':>7s} {'p95 ms':>7s} "
        f"{'p99 ms':>7s} {'errors':>6s} {'mean batch':>10s} {'of ceiling':>10s}"
    )
    print(header)
    print("-" * len(header))
    for r in table:
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "-"
        print(
            f"{r.server:8s} {r.clients:7d} {r.rps:8.1f} {r.p50_ms:7.1f} {r.p95_ms:7.1f} "
            f"{r.p99_ms:7.1f} {r.errors:6d} {batch:>10s} {r.rps / round_ceiling[r.round]:10.0%}"
        )
    print("(of ceiling: against the best raw layout measured just before that round)")

    top = max(r.clients for r in all_results)
    ratios: dict = {"at_clients": top}
    over_ceiling = [
        find[("service", top, i)].rps / round_ceiling[i]
        for i in rounds
        if ("service", top, i) in find
    ]
    over_naive = [
        find[("service", top, i)].rps / find[("naive", top, i)].rps
        for i in rounds
        if ("service", top, i) in find
        and find.get(("naive", top, i))
        and find[("naive", top, i)].rps
    ]
    p50_one = [find[("service", 1, i)].p50_ms for i in rounds if ("service", 1, i) in find]
    print()
    if over_ceiling:
        ratios["service_over_ceiling"] = statistics.median(over_ceiling)
        print(
            f"service / ceiling at {top} clients: {ratios['service_over_ceiling']:.0%}"
            f"{_spread([100 * v for v in over_ceiling], '.0f')} "
            f"(goal >= {GOALS['service_over_ceiling']:.0%})"
        )
    if over_naive:
        ratios["service_over_naive"] = statistics.median(over_naive)
        print(
            f"service / naive at {top} clients: {ratios['service_over_naive']:.1f}x"
            f"{_spread(over_naive, '.1f')} (goal >= {GOALS['service_over_naive']:.0f}x)"
        )
        for clients in sorted({r.clients for r in all_results}):
            per_round = [
                find[("service", clients, i)].rps / find[("naive", clients, i)].rps
                for i in rounds
                if ("service", clients, i) in find and ("naive", clients, i) in find
            ]
            if per_round:
                print(f"  at {clients:2d} clients: {statistics.median(per_round):.1f}x")
    if p50_one:
        ratios["p50_1_client_ms"] = statistics.median(p50_one)
        print(
            f"service p50 at 1 client: {ratios['p50_1_client_ms']:.1f} ms"
            f"{_spread(p50_one, '.1f')} (goal <= {GOALS['p50_1_client_ms']:.0f} ms)"
        )
    errors = sum(r.errors for r in all_results if r.server == "service")
    print(f"service errors (non-2xx or socket), all rounds: {errors}")
    for name, tag in (compared or {}).items():
        ratios[name] = compare_ratios(find, rounds, name, tag, top)
    return {
        "model": model,
        "load_generator": load,
        "ceilings": ceilings,
        "results": [asdict(r) | {"rps": r.rps} for r in table],
        "all_rounds": [asdict(r) | {"rps": r.rps} for r in all_results],
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels, comma-separated")
    parser.add_argument("--url", help="a running service to measure instead of starting one")
    parser.add_argument(
        "--model-tag",
        default=os.environ.get("CATDOG_MODEL_TAG"),
        help="BentoML model; default: the one `make package` made from the MLflow champion "
        "(not the newest in the store, which may be a rollout benchmark's candidate)",
    )
    parser.add_argument(
        "--compare-tag",
        action="append",
        default=[],
        help="another BentoML model to serve and load the same way in every round "
        "(repeatable); reported as compare1, compare2, ...",
    )
    parser.add_argument("--images", type=Path, default=ROOT / "test_images")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive PyTorch server")
    parser.add_argument("--naive-model-uri", help="default: runs:/<champion run>/pytorch_model")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds (servers alternate); medians are reported"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs under {args.images}: run `make data` (dvc pull) first")
    load = args.load
    if load == "auto":
        load = "wrk" if shutil.which("wrk") else "python"
    elif load == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --load python")

    stored = stored_model(args.model_tag or champion_model_tag())
    onnx_path = Path(stored.path_of("model.onnx"))
    run_id = stored.info.metadata.get("mlflow_run_id")
    meta = stored.info.metadata
    model = (
        f"{stored.tag} (MLflow {meta.get('mlflow_model_name')} v{meta.get('mlflow_model_version')})"
    )
    compared = {f"compare{i}": stored_model(tag) for i, tag in enumerate(args.compare_tag, start=1)}
    naive_uri = args.naive_model_uri or (f"runs:/{run_id}/pytorch_model" if run_id else None)
    if not args.no_naive and naive_uri is None:
        raise SystemExit(f"{stored.tag} has no mlflow_run_id: pass --naive-model-uri or --no-naive")

    work = Path(tempfile.mkdtemp(prefix="catdog-bench-"))
    print(
        f"benchmark: {len(files)} photos from {args.images}, {args.duration:.0f} s per level, "
        f"clients {clients_list}, logs in {work}",
        flush=True,
    )
    # Every server is loaded with the same photos, clients and duration.
    run_levels = functools.partial(
        measure,
        files=files,
        clients_list=clients_list,
        duration=args.duration,
        load=load,
        work=work,
    )
    ceilings: list[dict[str, float]] = []
    results: list[LoadResult] = []
    log_stats = None
    for round_index in range(args.repeat):
        if args.repeat > 1:
            print(f"round {round_index + 1} of {args.repeat}", flush=True)
        print("1/3 raw ONNX Runtime ceiling ...", flush=True)
        ceilings.append(raw_ceiling(onnx_path, files, args.duration))

        print("2/3 service ...", flush=True)
        server = None
        if args.url:
            base = args.url.rstrip("/")
        else:
            port = free_port()
            env = service_env(os.environ.get("BENTOML_HOME"), work)
            env["CATDOG_MODEL_TAG"] = str(stored.tag)  # the service serves the model measured
            server = start_service(port, env, work, args.start_timeout)
            base = f"http://127.0.0.1:{port}"
        try:
            results += run_levels(
                "service",
                base,
                expect_version=str(meta.get("mlflow_model_version")),
                round_index=round_index,
            )
            if server is not None:  # a fresh server: its counters cover this run only
                log_stats = metric_sums(
                    base, "catdog_inference_log_dropped_total", "catdog_predictions_total"
                )
        finally:
            if server is not None:
                server.stop()
        for name, other in compared.items():
            print(f"2/3 {name}: service with {other.tag} ...", flush=True)
            results += measure_stored(
                name, other, run_levels, work, args.start_timeout, round_index
            )

        if not args.no_naive:
            print(f"3/3 naive PyTorch server ({naive_uri}) ...", flush=True)
            port = free_port()
            server = start_naive(port, naive_uri, work, args.start_timeout)
            try:
                results += run_levels("naive", f"http://127.0.0.1:{port}", round_index=round_index)
            finally:
                server.stop()

    # Other work on a shared machine comes and goes: the ceiling is measured
    # once more after the servers, to show how much it moved.
    print("raw ONNX Runtime ceiling, again ...", flush=True)
    ceilings.append(raw_ceiling(onnx_path, files, args.duration))
    summary = report(
        ceilings, results, load, model, {name: str(m.tag) for name, m in compared.items()}
    )
    if log_stats:
        dropped = log_stats["catdog_inference_log_dropped_total"]
        total = log_stats["catdog_predictions_total"]
        print(
            f"inference-log records dropped (writer queue full) during the last service run: "
            f"{dropped:.0f} of {total:.0f}"
        )
        summary["inference_log_dropped"] = dropped
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
