"""The closed loop, shown on the running platform (`make loop-demo`; needs `make all` first).

1. a labelled batch is made: darker copies of 40 training photos (the kind of
   photo users now upload), plus one corrupt file and one exact copy of a
   dataset photo, which ingest must reject;
2. `ingest/labelled` adds the good ones as a new DVC data version (pushed to
   the local remote `make dvc-remote` configured) and emits catdog.data.new-version;
3. darker traffic goes to the service, then `evaluate/scheduled` runs: it fails
   for drift and emits catdog.evaluation.drift-detected.
The automations do the rest (train/retrain, the gate, package/champion,
deploy/rollout after CATDOG_ROLLOUT_DELAY): watch them in the Prefect UI.
The batch changes data/ and data.dvc of this checkout: commit data.dvc to keep
the new version, or `git checkout data.dvc && dvc checkout data` to undo it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from model_lib.traffic import apply_shift

BATCH_PER_CLASS = 20


def step(message: str) -> None:
    print(f"\n[loop-demo] {message}", flush=True)


def make_batch(data_dir: Path, batch: Path) -> Path:
    for name in ("cat", "dog"):
        (batch / name).mkdir(parents=True, exist_ok=True)
        # From the end of the sorted pool: other photos than tests and traffic use.
        for path in sorted((data_dir / name).glob("*.jpg"))[-BATCH_PER_CLASS:]:
            target = batch / name / f"{path.stem}.darker.jpg"
            target.write_bytes(apply_shift(path.read_bytes(), "darker"))
    (batch / "dog" / "unreadable.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole photo")
    first_cat = sorted((data_dir / "cat").glob("*.jpg"))[0]
    (batch / "cat" / "already-known.jpg").write_bytes(first_cat.read_bytes())
    return batch


def run(*args: str, check: bool = True) -> int:
    print("$", " ".join(args), flush=True)
    return subprocess.run([sys.executable, *args], check=check).returncode


def main() -> None:
    run_dir = Path(os.environ["CATDOG_RUN_DIR"])
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    batch = make_batch(Path(os.environ["CATDOG_DATA_DIR"]), run_dir / "demo-batch")
    step(f"1/3 ingest {batch} (40 new photos, 1 corrupt, 1 duplicate)")
    run(
        "-m",
        "catdog_runtime.run_deployment",
        "ingest/labelled",
        "--params",
        json.dumps({"folder": str(batch)}),
    )
    step("2/3 darker traffic to the service")
    run("-m", "catdog_runtime.traffic", "--count", "120", "--shift", "darker")
    step("3/3 evaluate/scheduled now: it should fail for drift (that failure is the alarm)")
    if run("-m", "catdog_runtime.run_deployment", "evaluate/scheduled", check=False) == 0:
        print("evaluation passed: no alarm was raised (was the traffic shifted enough?)")
    step(
        "the loop continues by itself; watch it in the Prefect UI (sign in with "
        f"catdog:<contents of {os.environ['CATDOG_SECRETS_DIR']}/prefect-api>):\n"
        f"  events       {ui}/events            (catdog.* events, each linked to its run)\n"
        f"  automations  {ui}/automations       (retrain-on-alarm, package-on-promotion, ...)\n"
        f"  runs         {ui}/runs              (train/retrain -> package/champion -> "
        "deploy/rollout)\n"
        "  the new data version is in data.dvc; turn the loop off with `make loop-off`"
    )


if __name__ == "__main__":
    main()
