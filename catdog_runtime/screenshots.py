"""Screenshots of the running platform for the README, with headless Chromium.

    python -m catdog_runtime.screenshots            # writes docs/screenshots/*.png
    python -m catdog_runtime.screenshots --loop     # the loop's pages, after `make loop-demo`

Needs the platform up (`make all`) and Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.settings import PortSettings

OUT = Path("docs/screenshots")


def chromium_screenshot(
    url: str, out: Path, width: int = 1400, height: int = 900, headers: dict | None = None
) -> None:
    """A screenshot of `url` by headless Chromium, sending `headers` with every request.

    Chromium is driven over --remote-debugging-pipe (DevTools on two file descriptors
    only this process holds): a login header set so is in no command line, unlike
    `http://user:password@host`, and no local user can attach to a debugging port.
    """
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile, DevTools(binary, profile) as browser:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)
        page = session["sessionId"]
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            page,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        browser.call("Network.enable", page)
        browser.call("Network.setExtraHTTPHeaders", page, headers=headers or {})
        browser.call("Page.navigate", page, url=url)
        # As `--virtual-time-budget=15000`: let the page's scripts run 15 s of virtual
        # time (fetches complete first), then shoot.
        browser.call(
            "Emulation.setVirtualTimePolicy",
            page,
            policy="pauseIfNetworkFetchesPending",
            budget=15000,
        )
        browser.wait_event("Emulation.virtualTimeBudgetExpired", timeout=120)
        shot = browser.call("Page.captureScreenshot", page, format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
    if not out.is_file() or out.stat().st_size < 10_000:
        raise SystemExit(f"screenshot of {url} failed or is blank: {out}")
    print(f"{out}  <- {url}")


class DevTools:
    """Headless Chromium and its DevTools protocol over a pipe (JSON messages ending in NUL)."""

    def __init__(self, binary: str, profile: str) -> None:
        self.argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            # The background-networking flags keep Chromium from calling out: only
            # package registries are reachable here, and each refused call slows it.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]
        self.next_id, self.buffer, self.events = 0, b"", []

    def __enter__(self) -> DevTools:
        to_chromium, from_chromium = os.pipe(), os.pipe()
        # Chromium reads commands on fd 3 and answers on fd 4; above 4 first, so the
        # dup2 calls in the child never overwrite one another.
        read_end = fcntl.fcntl(to_chromium[0], fcntl.F_DUPFD, 10)
        write_end = fcntl.fcntl(from_chromium[1], fcntl.F_DUPFD, 10)

        def wire() -> None:
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire,
        )
        for fd in (*to_chromium[:1], from_chromium[1], read_end, write_end):
            os.close(fd)
        self.commands, self.answers = to_chromium[1], from_chromium[0]
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.commands)  # Chromium exits when its pipe closes
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.answers)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self.receive(timeout=120)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise SystemExit(f"Chromium: {method} failed: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self.receive(timeout=deadline - time.monotonic()))

    def receive(self, timeout: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.answers], [], [], max(timeout, 0))
            chunk = os.read(self.answers, 1 << 20) if ready else b""
            if not chunk:
                raise SystemExit("Chromium stopped answering (exited or timed out)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def basic_auth(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--loop", action="store_true", help="only the Prefect pages the closed loop shows in"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ports = PortSettings.from_env()
    prefect = f"http://127.0.0.1:{ports.prefect_port}"
    if args.loop:
        # The event feed filtered to the project's events (a trailing * is a prefix in
        # the UI's `events` query), and the chain of runs they started.
        events = f"{prefect}/events?events=catdog.*"
        chromium_screenshot(events, args.out / "loop-events.png", height=1100)
        chromium_screenshot(f"{prefect}/runs", args.out / "loop-runs.png", height=1100)
        chromium_screenshot(f"{prefect}/automations", args.out / "loop-automations.png")
        return
    mlflow_url = os.environ.get("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{ports.mlflow_port}")
    service = f"http://127.0.0.1:{ports.bento_port}"

    client = MlflowClient(mlflow_url)
    training = client.get_experiment_by_name("catdog-training")
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    monitoring = client.get_experiment_by_name("catdog-monitoring")
    if monitoring is None:
        raise SystemExit("no evaluation run yet: run `make evaluate` first")
    (evaluation,) = client.search_runs(
        [monitoring.experiment_id],
        "tags.status != ''",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    ) or [None]
    chromium_screenshot(f"{prefect}/runs", args.out / "prefect-runs.png")
    # MLflow's UI logs in as its clients do (scripts/env.sh).
    login = basic_auth(
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    )
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}/model-metrics",
        args.out / "mlflow-run-metrics.png",
        headers=login,
    )
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}"
        "/artifacts/plots/confusion_matrix.png",
        args.out / "mlflow-run-plots.png",
        headers=login,
    )
    with tempfile.TemporaryDirectory(prefix="catdog-screenshots-") as tmp:
        report = client.download_artifacts(evaluation.info.run_id, "drift_report.html", tmp)
        shot = args.out / "evidently-drift-report.png"
        chromium_screenshot(Path(report).as_uri(), shot, height=1400)
    chromium_screenshot(f"{service}/", args.out / "service-openapi.png")


if __name__ == "__main__":
    main()
