"""Soak benchmark: mixed and hostile traffic through the balancer for N minutes,
while a replica is killed with SIGKILL every few minutes.

16 clients call HAProxy's public frontend (http://127.0.0.1:$BENTO_PORT, with its
per-client limits) the whole time:

  - 2 trickle slow uploads back to back (a 5 MiB body declared, 1 KB sent a
    second): each should end in a 408;
  - 14 cycle through 8 good photos (test_images/: 200), 1 decompression trick
    (catdog_runtime.hostile: 413 over the pixel limit, 200 under it) and 1 huge
    upload (1 MiB over CATDOG_MAX_UPLOAD_BYTES: 413).

Every --kill-every seconds (the first at half that) one replica in turn is
killed with SIGKILL, its whole process tree (bench.faults.kill_replica, as in
bench-rollout), and the watchdog restarts it. The resident memory of every
process of every replica is sampled every 100 ms (catdog_runtime.processes.RssSampler).

A good request counts as lost when it gets anything but a 200. HAProxy retries
once, on the other replica, a refused connection, a 503 and (CATDOG_LB_REPLAY_DROPPED,
on by default) a request the killed replica held without answering; with that
setting off, those in-flight requests count as lost.

    make up && make train-small && make package && make serve REPLICAS=2
    make bench-soak [SOAK_MINUTES=30]      (python -m bench.soak --help)

Its traffic comes in through the public frontend, so the inference log records
the good and decoded photos as user traffic; run `make loop-off` first on a
platform whose drift alarms matter.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from matplotlib.figure import Figure

from bench.faults import kill_replica
from catdog_runtime import balancer, processes, services
from catdog_runtime.hostile import (
    OVER_PIXEL_LIMIT,
    decompression_tricks,
    huge_upload,
    status_of,
    trickle,
)
from model_lib.client import classify, classify_all
from model_lib.inference_log import BENCHMARK_SOURCE
from model_lib.metrics import latency_percentiles
from model_lib.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
GiB = 1024 * MiB
# The target for every worker, beside the decode budget (CATDOG_MAX_DECODED_BYTES).
WORKER_RSS_TARGET = 1 * GiB
MIX = ("good",) * 8 + ("hostile", "huge")
SLOW_DECLARED = 5 * MiB
KINDS = ("good", "hostile", "huge", "slow")


@dataclass
class Record:
    kind: str
    name: str  # the photo or hostile upload sent
    started: float  # seconds since the soak began
    finished: float
    status: int | str  # HTTP status, or the exception's name when no answer came
    detail: str = ""  # the error body or exception message, for requests not answered 200


@dataclass
class Kill:
    replica: str
    at: float  # seconds since the soak began
    back: float  # back in HAProxy's rotation
    restart_started_after_s: float = 0.0


# ------------------------------------------------------------------ pure parts
def expected(record: Record) -> set[int]:
    """The statuses a request of this kind should get."""
    if record.kind == "good":
        return {200}
    if record.kind == "hostile":
        return {413} if record.name.endswith(OVER_PIXEL_LIMIT) else {200}
    if record.kind == "huge":
        return {413}
    if record.kind == "slow":
        return {408}
    raise ValueError(f"unknown kind {record.kind!r}")


def outcome(record: Record) -> str:
    """`ok`; `lost` (a good request not answered 200); `unexpected` (another kind
    answered what it should not, or not at all)."""
    if record.status in expected(record):
        return "ok"
    return "lost" if record.kind == "good" else "unexpected"


def during_kill(record: Record, kills: list[Kill]) -> bool:
    """Whether the request overlapped a replica's time from its kill to back in rotation."""
    return any(record.started <= k.back and record.finished >= k.at for k in kills)


def summarize(records: list[Record], kills: list[Kill]) -> dict:
    """Per kind: requests sent, counts per status, how many got what they should;
    for good requests also answered / lost (and why) and latency percentiles."""
    result = {}
    for kind in KINDS:
        chosen = [r for r in records if r.kind == kind]
        outcomes = Counter(outcome(r) for r in chosen)
        row = {
            "sent": len(chosen),
            "statuses": dict(sorted(Counter(str(r.status) for r in chosen).items())),
            "as_expected": outcomes["ok"],
            "unexpected": outcomes["unexpected"],
        }
        if kind == "good":
            lost = [r for r in chosen if outcome(r) == "lost"]
            latencies = [(r.finished - r.started) * 1000 for r in chosen if r.status == 200]
            pct = latency_percentiles(latencies)
            row.update(
                answered=outcomes["ok"],
                lost=len(lost),
                lost_by_status=dict(sorted(Counter(str(r.status) for r in lost).items())),
                lost_during_a_kill=sum(during_kill(r, kills) for r in lost),
                lost_details=sorted({r.detail for r in lost})[:5],
                p50_ms=round(pct["latency_p50_ms"], 1),
                p99_ms=round(pct["latency_p99_ms"], 1),
            )
        result[kind] = row
    return result


def worker_memory(
    peak: dict[int, int], history: list[tuple[float, int, int]], labels: dict[int, str]
) -> list[dict]:
    """One row per worker (`labels`: worker pid -> its replica): peak RSS, median RSS
    over its samples, and the peak over that median."""
    samples: dict[int, list[int]] = {}
    for _, pid, rss in history:
        samples.setdefault(pid, []).append(rss)
    rows = []
    for pid, top in sorted(peak.items()):
        if pid not in labels:
            continue
        typical = statistics.median(samples.get(pid, [top]))
        rows.append(
            {
                "replica": labels[pid],
                "pid": pid,
                "peak_mib": round(top / MiB),
                "median_mib": round(typical / MiB),
                "peak_over_median_mib": round((top - typical) / MiB),
            }
        )
    return rows


def table(summary: dict, memory: list[dict], decoded_budget: int) -> str:
    """The report as text."""
    lines = [f"{'kind':8} {'sent':>6} {'expected':>8} {'other':>6}  statuses"]
    for kind, row in summary.items():
        other = row["sent"] - row["as_expected"]
        statuses = ", ".join(f"{k}: {v}" for k, v in row["statuses"].items())
        lines.append(f"{kind:8} {row['sent']:6d} {row['as_expected']:8d} {other:6d}  {statuses}")
    good = summary["good"]
    lines.append(
        f"\ngood requests: {good['sent']} sent, {good['answered']} answered, {good['lost']} lost "
        f"({good['lost_during_a_kill']} while a replica was down; by status "
        f"{good['lost_by_status'] or '-'}); p50 {good['p50_ms']} ms, p99 {good['p99_ms']} ms"
    )
    lines.append(
        f"\n{'replica':8} {'worker':>8} {'peak MiB':>9} {'median':>7} {'peak-median':>12}"
        f"   (target < {WORKER_RSS_TARGET // MiB} MiB; decode budget "
        f"{decoded_budget // MiB} MiB, CATDOG_MAX_DECODED_BYTES)"
    )
    for row in memory:
        lines.append(
            f"{row['replica']:8} {row['pid']:8d} {row['peak_mib']:9d} {row['median_mib']:7d} "
            f"{row['peak_over_median_mib']:12d}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ traffic
@dataclass
class Traffic:
    """The 16 clients, in a background thread, until stopped."""

    url: str
    clients: int
    slow_clients: int
    max_upload: int
    slow_seconds: float
    records: list[Record] = field(default_factory=list)
    t0: float = 0.0  # when the traffic started (time.monotonic())

    def __post_init__(self):
        photos = sorted((ROOT / "test_images").rglob("*.jpg"))
        if not photos:
            raise SystemExit("no photos under test_images/: run `make data`")
        self._photos = itertools.cycle([(p.name, p.read_bytes()) for p in photos])
        self._tricks = itertools.cycle(sorted(decompression_tricks().items()))
        self._huge = huge_upload(self.max_upload)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def _payload(self, kind: str) -> tuple[str, bytes]:
        if kind == "good":
            return next(self._photos)
        if kind == "hostile":
            return next(self._tricks)
        return "huge.jpg", self._huge

    async def _mixed(self, client: httpx.AsyncClient, offset: int) -> None:
        # Each client starts at another place in the mix, so kinds overlap in time.
        for kind in itertools.islice(itertools.cycle(MIX), offset, None):
            if self._stop.is_set():
                return
            name, data = self._payload(kind)
            started = time.monotonic() - self.t0
            answer = await classify(client, self.url, data, name, source=BENCHMARK_SOURCE)
            # status 0: no HTTP answer; the exception's name instead
            status = answer.status or (answer.error or "no answer").partition(":")[0]
            finished = time.monotonic() - self.t0
            detail = (answer.error or "")[:200]
            self.records.append(Record(kind, name, started, finished, status, detail))

    async def _slow(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic() - self.t0
            try:
                _, answer = await asyncio.to_thread(
                    trickle, self.url, SLOW_DECLARED, self.slow_seconds
                )
                status: int | str = status_of(answer) or "no answer"
            except OSError as exc:
                status = type(exc).__name__
            self.records.append(
                Record("slow", "trickle", started, time.monotonic() - self.t0, status)
            )

    async def _run(self) -> None:
        mixed = self.clients - self.slow_clients
        limits = httpx.Limits(max_connections=mixed)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            await asyncio.gather(
                *(self._mixed(client, i) for i in range(mixed)),
                *(self._slow() for _ in range(self.slow_clients)),
            )

    def __enter__(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        # A slow upload in progress ends with its 408.
        self._thread.join(self.slow_seconds + 120)


# ------------------------------------------------------------------ the platform
def check_serving(url: str, kill_every: float) -> list:
    """The replicas behind the balancer; exits with what to do when nothing serves."""
    replicas = balancer.load()
    start_hint = "start it with `make up && make serve REPLICAS=2` (README, Benchmarks)"
    if not replicas:
        raise SystemExit(
            f"bench-soak: nothing serves (no replica behind the balancer); {start_hint}"
        )
    if kill_every and len(replicas) < 2:
        raise SystemExit(
            f"bench-soak: {len(replicas)} replica serves; killing it would stop the service: "
            "`make serve REPLICAS=2`, or --kill-every 0 for no kills"
        )
    photo = sorted((ROOT / "test_images").rglob("*.jpg"))[:1]
    if not photo:
        raise SystemExit("no photos under test_images/: run `make data`")
    [answer] = classify_all(url, [(photo[0].name, photo[0].read_bytes())], timeout=60)
    if answer.status != 200:
        raise SystemExit(
            f"bench-soak: {url}/classify answered {answer.status or 'nothing'} "
            f"({answer.error}); {start_hint}"
        )
    return replicas


def retries() -> dict[str, int]:
    """HAProxy's count of retried and redispatched requests, summed over the replicas."""
    stats = balancer.server_stats().values()
    return {
        "retries": sum(int(row.get("wretr") or 0) for row in stats),
        "redispatches": sum(int(row.get("wredis") or 0) for row in stats),
    }


def plot(records: list[Record], kills: list[Kill], rss_rows, path: Path) -> None:
    """Good-request latency (p50/p99 per 10 s) and each worker's RSS over time."""
    good = [r for r in records if r.kind == "good"]
    bins: dict[int, list[float]] = {}
    for r in good:
        if r.status == 200:
            bins.setdefault(int(r.started // 10), []).append((r.finished - r.started) * 1000)
    xs = sorted(bins)
    pct = [latency_percentiles(bins[x]) for x in xs]
    figure = Figure(figsize=(10, 7))
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot([x * 10 + 5 for x in xs], [p["latency_p50_ms"] for p in pct], label="p50")
    top.plot([x * 10 + 5 for x in xs], [p["latency_p99_ms"] for p in pct], label="p99")
    lost = [r.started for r in good if r.status != 200]
    if lost:
        top.plot(lost, [1] * len(lost), "rx", label="lost good request")
    top.set_yscale("log")
    top.set_ylabel("good requests, ms (per 10 s)")
    top.legend(loc="upper right")
    for (replica, pid), points in sorted(rss_rows.items()):
        bottom.plot([t for t, _ in points], [m for _, m in points], label=f"{replica} {pid}")
    bottom.axhline(WORKER_RSS_TARGET / MiB, color="red", linestyle="--", label="1 GiB target")
    bottom.set_ylabel("worker RSS, MiB")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right", fontsize="small", ncol=2)
    for axis in (top, bottom):
        for k in kills:
            axis.axvspan(k.at, k.back, color="grey", alpha=0.2)
    top.set_title("soak: grey = a replica killed until back in rotation")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3, help="how long (default 3)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slow-clients", type=int, default=2, help="of --clients")
    parser.add_argument(
        "--kill-every", type=float, default=120, help="seconds between replica kills (0: none)"
    )
    parser.add_argument(
        "--url", help="where to send (default: the public frontend, http://127.0.0.1:$BENTO_PORT)"
    )
    parser.add_argument(
        "--output", type=Path, help="folder for soak-<time>.json/.png (default .run/bench-soak)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.slow_clients < args.clients:
        parser.error("--slow-clients: at least one client must send the mix")
    url = args.url or f"http://127.0.0.1:{services.ports().bento_port}"
    service = ServiceSettings.from_env()
    replicas = check_serving(url, args.kill_every)
    output = args.output or services.run_dir() / "bench-soak"
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load_start = os.getloadavg()
    print(
        f"soak: {args.minutes:g} min, {args.clients} clients ({args.slow_clients} slow) at {url}, "
        f"{len(replicas)} replicas, a kill every {args.kill_every:g} s; "
        f"load average {load_start}",
        flush=True,
    )

    labels: dict[int, str] = {}  # worker pid -> its replica, for every worker seen
    labelled = [float("-inf")]

    def roots() -> list[int]:
        pids = [services.owned_pid(r.service) for r in replicas]
        # The workers (the processes below `bentoml serve`) and their replica, once a
        # second: a process tree is a scan of every process of the machine.
        if time.monotonic() - labelled[0] >= 1:
            labelled[0] = time.monotonic()
            for replica, pid in zip(replicas, pids, strict=True):
                for child in processes.descendants(pid) - {pid} if pid is not None else ():
                    labels.setdefault(child, replica.name)
        return [pid for pid in pids if pid is not None]

    retries_before = retries()
    kills: list[Kill] = []
    # The uploads are made before the clock starts (the hostile PNGs take seconds).
    traffic = Traffic(
        url,
        args.clients,
        args.slow_clients,
        service.max_upload_bytes,
        service.upload_timeout_seconds,
    )
    rss = processes.RssSampler(roots, interval=0.1, history_every=1.0)
    with rss, traffic:
        t0 = traffic.t0
        end = t0 + args.minutes * 60
        next_kill = t0 + args.kill_every / 2 if args.kill_every else float("inf")
        next_progress = t0 + 30
        while time.monotonic() < end:
            if time.monotonic() >= next_kill:
                victim = replicas[len(kills) % len(replicas)]
                at = time.monotonic() - t0
                timing = kill_replica(victim)
                back = time.monotonic() - t0
                kills.append(
                    Kill(
                        victim.name, round(at, 1), round(back, 1), timing["restart_started_after_s"]
                    )
                )
                print(
                    f"    {victim.name} back in rotation {back - at:.0f} s after the kill",
                    flush=True,
                )
                next_kill += args.kill_every
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + 30
                print(
                    f"  {time.monotonic() - t0:5.0f} s: {len(traffic.records)} requests answered",
                    flush=True,
                )
            time.sleep(0.5)
    took = time.monotonic() - t0
    records = sorted(traffic.records, key=lambda r: r.started)
    summary = summarize(records, kills)
    memory = worker_memory(rss.peak, rss.history, labels)
    report = {
        "date_utc": stamp,
        "command": " ".join(["python -m bench.soak", *(argv or sys.argv[1:])]),
        "minutes": round(took / 60, 2),
        "url": url,
        "clients": args.clients,
        "slow_clients": args.slow_clients,
        "replicas": [r.name for r in replicas],
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "settings": {
            "CATDOG_MAX_DECODED_BYTES": service.max_decoded_bytes,
            "CATDOG_MAX_UPLOAD_BYTES": service.max_upload_bytes,
            "CATDOG_MAX_PIXELS": service.max_pixels,
            "CATDOG_UPLOAD_TIMEOUT_SECONDS": service.upload_timeout_seconds,
        },
        "kills": [asdict(k) for k in kills],
        "haproxy": {k: v - retries_before[k] for k, v in retries().items()},
        "traffic": summary,
        "worker_memory": memory,
        "worker_rss_target_mib": WORKER_RSS_TARGET // MiB,
    }
    json_path = output / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1))
    rss_rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    workers = {row["pid"] for row in memory}
    for moment, pid, value in rss.history:
        if pid in workers:
            rss_rows.setdefault((labels[pid], pid), []).append((moment - t0, value / MiB))
    png_path = output / f"soak-{stamp}.png"
    plot(records, kills, rss_rows, png_path)
    print(f"\n{table(summary, memory, service.max_decoded_bytes)}")
    print(f"\nkills: {json.dumps(report['kills'])}\nHAProxy: {json.dumps(report['haproxy'])}")
    print(f"load average at end: {report['load_average_end']}")
    print(f"\nwritten: {json_path}\n         {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
