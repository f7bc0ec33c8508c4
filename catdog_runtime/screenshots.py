"""Screenshots of the running platform for the README, with headless Chromium.

    python -m catdog_runtime.screenshots            # writes docs/screenshots/*.png
    python -m catdog_runtime.screenshots --loop     # the loop's pages, after `make loop-demo`

Needs the platform up (`make all`) and Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from mlflow import MlflowClient

from catdog_runtime.waits import wait_until
from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.settings import PortSettings

OUT = Path("docs/screenshots")
# A pigeon: a kind of photo model_lib.data holds out of training (the test share).
NON_PET_PHOTO = Path("other_images/caltech101/pigeon/image_0001.jpg")


# Chromium's background-networking flags keep it from calling out: only package
# registries are reachable here, and each refused call slows it.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# How long a page may take to load and go quiet, and to draw once it has.
LOAD_TIMEOUT_SECONDS = 120
SETTLE_SECONDS = 2
READY_TIMEOUT_SECONDS = 60
# One of the loop's automations (prefect.yaml): the list has rendered when it shows.
READY_AUTOMATION = "retrain-on-alarm"
# Where the Prefect UI keeps the base64 of the auth string it signs in with (the
# `prefect-password` key of both the v1 and the v2 UI of Prefect 3.9).
PREFECT_UI_AUTH_KEY = "prefect-password"


class DevTools:
    """Chromium driven over --remote-debugging-pipe (DevTools protocol on fds 3 and 4):
    no debugging port another local user could reach, no secret in argv."""

    def __init__(self, binary: str, profile: str, width: int, height: int):
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()

        def on_fds_3_and_4() -> None:  # runs in the child, before close_fds
            os.dup2(to_chromium, 3)
            os.dup2(from_chromium, 4)

        self.process = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=on_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], LOAD_TIMEOUT_SECONDS)
            if not ready:
                raise RuntimeError(f"chromium said nothing for {LOAD_TIMEOUT_SECONDS} s")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.process.wait()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, **params) -> dict:
        """The first event `method` whose params include `params` (earlier ones dropped)."""
        while True:
            while self.events:
                event = self.events.pop(0)
                given = event.get("params", {})
                if event.get("method") == method and all(
                    given.get(k) == v for k, v in params.items()
                ):
                    return event
            self.events.append(self._read())

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            os.close(self._commands)
            os.close(self._answers)
            self.process.wait(timeout=30)


def chromium_screenshot(
    url: str,
    out: Path,
    width: int = 1400,
    height: int = 900,
    local_storage: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    ready_text: str | None = None,
) -> None:
    """A PNG of `url` once it has drawn; `local_storage` is set in the page's origin
    before any of its scripts run (how the Prefect UI finds its credentials), `headers`
    go with every request the page makes (MLflow's basic-auth login). With `ready_text`,
    the capture waits until the page shows that text (a list that renders after its
    count, like the Prefect UI's automations), and fails if it never does."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(binary, profile, width, height)
        try:
            # A tab of its own: the one Chromium opens at start is not attached for capture.
            page = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=page, flatten=True)[
                "sessionId"
            ]
            browser.send("Page.enable", session)
            if headers:
                browser.send("Network.enable", session)
                browser.send("Network.setExtraHTTPHeaders", session, headers=headers)
            if local_storage:
                # about:blank has no storage of its own: only the page's origin is written.
                script = (
                    f"try {{ for (const [k, v] of Object.entries({json.dumps(local_storage)}))"
                    " localStorage.setItem(k, v); } catch (e) {}"
                )
                browser.send("Page.addScriptToEvaluateOnNewDocument", session, source=script)
            browser.send("Page.setLifecycleEventsEnabled", session, enabled=True)
            browser.send("Page.navigate", session, url=url)
            # The UIs fetch their data after the page has loaded: wait until no request
            # has been pending for a while, then give them a moment to draw it.
            browser.wait_event("Page.lifecycleEvent", name="networkIdle")
            if ready_text:
                shows = f"document.body.innerText.includes({json.dumps(ready_text)})"
                wait_until(
                    lambda: (
                        browser.send("Runtime.evaluate", session, expression=shows)
                        .get("result", {})
                        .get("value", False)
                    ),
                    f"{url} showing {ready_text!r}",
                    READY_TIMEOUT_SECONDS,
                    interval=0.5,
                )
            time.sleep(SETTLE_SECONDS)
            shot = browser.send("Page.captureScreenshot", session, format="png")
        finally:
            browser.close()
    out.write_bytes(base64.b64decode(shot["data"]))
    if out.stat().st_size < 10_000:
        raise SystemExit(f"screenshot of {url} failed or is blank: {out}")
    print(f"{out}  <- {url}")


def answer_page(service: str, photo: Path, folder: Path) -> Path:
    """An HTML page with `photo`, the curl command that sends it to the service, and the
    service's real answer to it: the README's picture of a `neither` answer."""
    photo_bytes = photo.read_bytes()
    response = httpx.post(
        f"{service}/classify", files={"image": (photo.name, photo_bytes)}, timeout=120
    )
    response.raise_for_status()
    image = base64.b64encode(photo_bytes).decode()
    command = f"$ curl -F image=@{photo} {service}/classify"
    page = folder / "answer.html"
    page.write_text(
        "<html><body style='font-family: monospace; font-size: 16px; margin: 24px'>"
        f"<img src='data:image/jpeg;base64,{image}' style='width: 300px'>"
        f"<pre style='white-space: pre-wrap'>{html.escape(command)}</pre>"
        f"<pre>{html.escape(json.dumps(response.json(), indent=2))}</pre></body></html>"
    )
    return page


def prefect_ui_login(auth: str | None = None) -> dict[str, str]:
    """The Prefect UI's stored sign-in for `auth`, default $PREFECT_API_AUTH_STRING."""
    auth = auth or os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        return {}
    return {PREFECT_UI_AUTH_KEY: base64.b64encode(auth.encode()).decode()}


def mlflow_ui_login() -> dict[str, str]:
    """The MLflow UI's HTTP basic login as the platform's clients log in (scripts/env.sh)."""
    user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--non-pet-photo",
        type=Path,
        default=NON_PET_PHOTO,
        help="the photo whose `neither` answer is shown (default: %(default)s)",
    )
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
        login = prefect_ui_login()
        chromium_screenshot(events, args.out / "loop-events.png", height=1100, local_storage=login)
        chromium_screenshot(
            f"{prefect}/runs", args.out / "loop-runs.png", height=1100, local_storage=login
        )
        chromium_screenshot(
            f"{prefect}/automations",
            args.out / "loop-automations.png",
            local_storage=login,
            ready_text=READY_AUTOMATION,
        )
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
    chromium_screenshot(
        f"{prefect}/runs", args.out / "prefect-runs.png", local_storage=prefect_ui_login()
    )
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}/model-metrics",
        args.out / "mlflow-run-metrics.png",
        headers=mlflow_ui_login(),
    )
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}"
        "/artifacts/plots/confusion_matrix_test.png",
        args.out / "mlflow-run-plots.png",
        headers=mlflow_ui_login(),
    )
    with tempfile.TemporaryDirectory(prefix="catdog-screenshots-") as tmp:
        report = client.download_artifacts(evaluation.info.run_id, "drift_report.html", tmp)
        shot = args.out / "evidently-drift-report.png"
        chromium_screenshot(Path(report).as_uri(), shot, height=1400)
    chromium_screenshot(f"{service}/", args.out / "service-openapi.png")
    with tempfile.TemporaryDirectory(prefix="catdog-screenshots-") as tmp:
        page = answer_page(service, args.non_pet_photo, Path(tmp))
        chromium_screenshot(page.as_uri(), args.out / "service-neither-answer.png", 1000, 860)


if __name__ == "__main__":
    main()
