"""The canary's verdict: may a new version take all traffic? (pure: no I/O)

The deploy flow (flows/deploy.py) gives the canary a share of live traffic,
scores `test_images/` on the canary and on the stable replicas directly, and
reads each replica's Prometheus `/metrics` before and after; this module turns
those into a promote / roll back decision with its reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# BentoML's per-request metrics (all routes, mounted ASGI apps included): its HTTP
# middleware's names under the default namespace of its configuration
# (tests/unit/test_rollout_verdict.py checks them against the installed BentoML).
BENTOML_NAMESPACE = "bentoml_service"
DURATION_METRIC = "request_duration_seconds"
REQUEST_DURATION = f"{BENTOML_NAMESPACE}_{DURATION_METRIC}"
REQUEST_TOTAL = f"{BENTOML_NAMESPACE}_request_total"
REQUEST_LABELS = ("endpoint", "service_name", "service_version", "http_response_code")
ENDPOINT = "/classify"


@dataclass(frozen=True)
class RolloutConfig:
    """Thresholds of a rollout; the flow's parameters and logged with its outcome."""

    # Share of live traffic the canary gets while it is judged.
    canary_share: float = 0.10
    # How long live traffic is watched after the accuracy check, in seconds.
    observe_seconds: float = 10.0
    # Canary accuracy on test_images/ may be at most this far below the stable
    # version's (same images, same moment): 2 pp is about one photo in 50.
    max_accuracy_drop: float = 0.02
    # With no stable version (the first deployment), the floor it must reach.
    min_accuracy: float = 0.5
    # Server errors (5xx) per request the canary answered.
    max_error_rate: float = 0.01
    # Canary p95 latency at most this multiple of the stable one's, plus a slack
    # for the noise of a shared 2-core machine (and the coarse histogram buckets).
    max_p95_ratio: float = 2.0
    p95_slack_ms: float = 50.0
    # Requests the canary must have answered for error rate and latency to mean anything.
    min_requests: int = 20

    def __post_init__(self):
        if not 0 < self.canary_share < 1:
            raise ValueError(f"canary_share must be in (0, 1), got {self.canary_share}")
        if self.observe_seconds < 0 or self.min_requests < 1:
            raise ValueError("observe_seconds must be >= 0 and min_requests >= 1")


@dataclass(frozen=True)
class Window:
    """What one replica answered on /classify: cumulative since it started, or the
    difference of two readings (`after - before`)."""

    requests: int = 0
    server_errors: int = 0
    # Cumulative histogram of request durations: (upper bound in seconds, count).
    buckets: tuple[tuple[float, float], ...] = ()

    def __add__(self, other: Window) -> Window:
        """Two replicas' counts together (a bucket missing on one side counts 0)."""
        sums = dict(self.buckets)
        for le, count in other.buckets:
            sums[le] = sums.get(le, 0.0) + count
        return Window(
            self.requests + other.requests,
            self.server_errors + other.server_errors,
            tuple(sorted(sums.items())),
        )

    def __sub__(self, before: Window) -> Window:
        earlier = dict(before.buckets)
        return Window(
            self.requests - before.requests,
            self.server_errors - before.server_errors,
            tuple((le, count - earlier.get(le, 0.0)) for le, count in self.buckets),
        )

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float | None:
        """Like Prometheus' histogram_quantile: linear within the bucket; None without data."""
        if not self.buckets or self.buckets[-1][1] <= 0:
            return None
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for upper, count in self.buckets:
            if count >= rank:
                if math.isinf(upper):  # beyond the last finite bound: that bound is all we know
                    return lower_bound * 1000
                share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
                return (lower_bound + (upper - lower_bound) * share) * 1000
            lower_bound, lower_count = upper, count
        return lower_bound * 1000


def parse_metrics(text: str, endpoint: str = ENDPOINT) -> Window:
    """The /classify counts of one replica's Prometheus text (all response codes summed)."""
    requests = errors = 0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.endswith(DURATION_METRIC):
            continue
        for sample in family.samples:
            if sample.labels.get("endpoint") != endpoint:
                continue
            if sample.name.endswith("_count"):
                requests += int(sample.value)
                if sample.labels.get("http_response_code", "").startswith("5"):
                    errors += int(sample.value)
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return Window(requests, errors, tuple(sorted(buckets.items())))


@dataclass(frozen=True)
class Evidence:
    """What was measured on one side (canary or stable) during the rollout."""

    accuracy: float  # on test_images/, sent to this side directly
    window: Window  # its /metrics over the canary period (live traffic + the accuracy run)
    # Distinct labels it answered on test_images/ (which hold every class).
    labels_answered: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: tuple[str, ...] = ()  # why not, when not
    figures: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all canary checks passed"


def judge(config: RolloutConfig, canary: Evidence, stable: Evidence | None) -> Verdict:
    """Promote only when every check passes; each failed check is a reason."""
    reasons = []
    window = canary.window
    p95 = window.quantile_ms(0.95)
    figures = {
        "canary_accuracy": canary.accuracy,
        "canary_requests": window.requests,
        "canary_error_rate": window.error_rate,
        "canary_p95_ms": p95,
    }
    if stable is None:
        if canary.accuracy < config.min_accuracy:
            reasons.append(
                f"accuracy {canary.accuracy:.3f} on test_images is below the floor "
                f"{config.min_accuracy:.3f} (no stable version to compare with)"
            )
    else:
        floor = stable.accuracy - config.max_accuracy_drop
        figures["stable_accuracy"] = stable.accuracy
        if canary.accuracy < floor:
            reasons.append(
                f"accuracy {canary.accuracy:.3f} on test_images is more than "
                f"{config.max_accuracy_drop:.3f} below the stable version's {stable.accuracy:.3f}"
            )
    # A model that answers one class whatever the photo (broken preprocessing, a
    # broken file) scores the base rate: near a weak stable model's accuracy,
    # yet plainly broken. Judged against what the stable version answers.
    stable_labels = stable.labels_answered if stable is not None else ()
    if len(canary.labels_answered) == 1 and len(stable_labels) != 1:
        reasons.append(
            f"it answers one class ({canary.labels_answered[0]!r}) for every photo of "
            "test_images"
            + (f", where the stable version answers {len(stable_labels)}" if stable_labels else "")
        )
    if window.requests < config.min_requests:
        reasons.append(
            f"the canary answered only {window.requests} requests (at least "
            f"{config.min_requests} needed to judge errors and latency)"
        )
    elif window.error_rate > config.max_error_rate:
        reasons.append(
            f"error rate {window.error_rate:.3%} ({window.server_errors} of {window.requests} "
            f"requests answered 5xx) is above {config.max_error_rate:.3%}"
        )
    stable_p95 = stable.window.quantile_ms(0.95) if stable is not None else None
    figures["stable_p95_ms"] = stable_p95
    if p95 is not None and stable_p95 is not None:
        limit = stable_p95 * config.max_p95_ratio + config.p95_slack_ms
        if p95 > limit:
            reasons.append(
                f"p95 latency {p95:.0f} ms is above {limit:.0f} ms "
                f"({config.max_p95_ratio:g} x the stable version's {stable_p95:.0f} ms "
                f"+ {config.p95_slack_ms:g} ms)"
            )
    return Verdict(not reasons, tuple(reasons), figures)


def canary_weights(share: float, stable_replicas: int, canary_replicas: int, full: int = 100):
    """(weight of each stable replica, weight of each canary replica) so that the
    canaries together get `share` of the requests (HAProxy weights: 1-256)."""
    if stable_replicas == 0:
        return full, full
    canary_total = share / (1 - share) * stable_replicas * full
    return full, max(1, round(canary_total / canary_replicas))


# ------------------------------------------------------------------ reconcile
# What serves (HAProxy and the balancer's state file) against what should serve (the
# bento of the version the MLflow alias `production` names). The deploy flow moves that
# alias last, once traffic has followed: a rollout killed before the move never
# happened, and what serves goes back to the alias's version. The balancer
# (catdog_runtime.balancer `reconcile`) carries the actions out, in this order.
START, WEIGHT, RETIRE, STOP = "start", "weight", "retire", "stop"


@dataclass(frozen=True)
class Served:
    """One replica as the balancer's state file records it."""

    port: int
    bento_tag: str
    weight: int


@dataclass(frozen=True)
class Action:
    kind: str  # START (count replicas of bento_tag), WEIGHT, RETIRE, STOP (a process only)
    bento_tag: str
    port: int | None = None
    weight: int | None = None  # WEIGHT: the weight to set
    count: int = 1  # START: how many replicas
    why: str = ""

    def __str__(self) -> str:
        what = {
            START: f"start {self.count} replica(s) of {self.bento_tag} at full weight",
            WEIGHT: f"set replica r{self.port} ({self.bento_tag}) to weight {self.weight}",
            RETIRE: f"retire replica r{self.port} ({self.bento_tag or 'unknown bento'})",
            STOP: f"stop replica process r{self.port} ({self.bento_tag})",
        }[self.kind]
        return f"{what}: {self.why}"


def reconcile_plan(
    target: str | None,
    recorded: list[Served],
    in_haproxy: dict[int, int],
    running: dict[int, str],
    full_weight: int = 100,
) -> list[Action]:
    """The actions that make the fleet serve exactly `target` (None: nothing) at full weight.

    `recorded`: the state file's replicas; `in_haproxy`: port -> weight of the servers
    HAProxy has now; `running`: port -> bento of the replica processes alive. An empty
    list: nothing to fix."""
    actions: list[Action] = []
    recorded_ports = {r.port for r in recorded}
    keep = [r for r in recorded if r.bento_tag == target]
    if target is not None and not keep:
        served = sorted({r.bento_tag for r in recorded})
        actions.append(
            Action(
                START,
                target,
                count=len(recorded) or 1,
                why=f"production names it, HAProxy serves {', '.join(served) or 'nothing'}",
            )
        )
    for replica in keep:
        weight = in_haproxy.get(replica.port, replica.weight)
        if weight != full_weight:
            actions.append(
                Action(
                    WEIGHT,
                    replica.bento_tag,
                    replica.port,
                    full_weight,
                    why=f"it serves production at weight {weight} (a rollout stopped mid-way)",
                )
            )
    wanted = f"production names {target}" if target else "nothing should serve"
    for replica in recorded:
        if replica.bento_tag != target:
            actions.append(Action(RETIRE, replica.bento_tag, replica.port, why=wanted))
    for port in sorted(set(in_haproxy) - recorded_ports):
        actions.append(
            Action(
                RETIRE,
                running.get(port, ""),
                port,
                why="in HAProxy but not in the balancer's state (a rollout stopped mid-way)",
            )
        )
    for port in sorted(set(running) - recorded_ports - set(in_haproxy)):
        actions.append(
            Action(
                STOP,
                running[port],
                port,
                why="started but never put behind HAProxy (a rollout stopped mid-way)",
            )
        )
    return actions
