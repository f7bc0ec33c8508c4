"""Screenshots of the running platform for the README, with headless Chromium.

    python -m catdog_runtime.screenshots            # writes docs/screenshots/*.png
    python -m catdog_runtime.screenshots --loop     # the loop's pages, after `make loop-demo`

Needs the platform up (`make all`) and Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.settings import PortSettings

OUT = Path("docs/screenshots")


def chromium_screenshot(url: str, out: Path, width: int = 1400, height: int = 900) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        # The background-networking flags keep Chromium from calling out: only
        # package registries are reachable here, and each refused call slows it.
        subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--virtual-time-budget=15000",
                "--hide-scrollbars",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not out.is_file() or out.stat().st_size < 10_000:
        raise SystemExit(f"screenshot of {url} failed or is blank: {out}")
    print(f"{out}  <- {url}")


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
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}/model-metrics",
        args.out / "mlflow-run-metrics.png",
    )
    chromium_screenshot(
        f"{mlflow_url}/#/experiments/{training.experiment_id}/runs/{champion.run_id}"
        "/artifacts/plots/confusion_matrix.png",
        args.out / "mlflow-run-plots.png",
    )
    with tempfile.TemporaryDirectory(prefix="catdog-screenshots-") as tmp:
        report = client.download_artifacts(evaluation.info.run_id, "drift_report.html", tmp)
        shot = args.out / "evidently-drift-report.png"
        chromium_screenshot(Path(report).as_uri(), shot, height=1400)
    chromium_screenshot(f"{service}/", args.out / "service-openapi.png")


if __name__ == "__main__":
    main()
