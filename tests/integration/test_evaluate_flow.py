"""train -> package -> `bentoml serve` -> `evaluate`, all real, through the Prefect worker.

The drift story needs its traffic in order (an empty log, then unshifted
traffic, then a wave of photos that are not pets, then darkened pet photos): the
`drift_story` fixture plays it once and records each evaluation, so the tests
that check them can run in any order. Evaluation requests are marked and never
count as traffic.
"""

from __future__ import annotations

import httpx
import pytest
from mlflow import MlflowClient

from catdog_runtime.processes import free_port
from model_lib.client import classify_all
from model_lib.data import discover_images
from model_lib.inference_log import EVALUATION_SOURCE
from model_lib.traffic import send_traffic
from tests.conftest import TEST_IMAGES, unseen_kind_photos
from tests.integration.conftest import events_named, prefect_api, run_deployment, wait_for

# The test model is small (a slice of the data, 2 epochs): accuracy is not
# what these tests judge, except in the one that sets a threshold on purpose.
LENIENT = {"min_accuracy": 0.0, "min_requests": 40, "window_minutes": 60}


def evaluate(platform, served: dict, **params) -> dict:
    """Run evaluate/scheduled on the traffic `served` logged; return the flow run (state
    type and message)."""
    params = {"service_url": served["url"], "inference_log": served["inference_log"], **params}
    # Failed runs are outcomes these tests check: the state, not the exit code, says which.
    return run_deployment(platform, "evaluate/scheduled", params, check=False)


def monitoring_runs(platform):
    client = MlflowClient(platform["mlflow_uri"])
    experiment = client.get_experiment_by_name("catdog-monitoring")
    return client, client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"]
    )


def test_package_recorded_the_bento_on_the_model_version(served_champion, trained):
    client, run = trained
    champion = client.get_model_version_by_alias("catdog-classifier", "champion")
    assert champion.tags["bento_tag"].startswith("catdog-classifier:")
    # The INT8 model ships when training logged one, float32 otherwise.
    has_int8 = bool(client.list_artifacts(champion.run_id, "int8"))
    body = httpx.post(
        f"{served_champion['url']}/classify",
        files={
            "image": (
                "cat.jpg",
                next((TEST_IMAGES / "cat").glob("*.jpg")).read_bytes(),
                "image/jpeg",
            )
        },
        headers={"X-Catdog-Source": EVALUATION_SOURCE},  # not traffic: drift tests count it
        timeout=60,
    ).json()
    assert body["model"]["precision"] == ("int8" if has_int8 else "float32")


def test_packaging_a_non_champion_is_refused(platform, trained):
    flow_run = run_deployment(platform, "package/champion", {"version": "999"}, check=False)
    assert flow_run["state"]["type"] == "FAILED"
    assert "v999 is not the champion" in flow_run["state"]["message"]


def test_service_down_fails_with_a_clear_message(platform, trained):
    nothing = {"url": f"http://127.0.0.1:{free_port()}", "inference_log": None}
    flow_run = evaluate(platform, nothing, **LENIENT)
    assert flow_run["state"]["type"] == "FAILED"
    assert "is unreachable" in flow_run["state"]["message"]
    assert "make serve" in flow_run["state"]["message"]


UNSHIFTED = 100  # all of test_images/: as many cats as dogs, like the training reference
NON_PET_WAVE = 45  # after 100 pet requests: about a third of the window, over 20 %


def non_pet_wave(url: str, count: int = NON_PET_WAVE) -> dict:
    """`count` user uploads of photos that are not pets, of kinds the model never
    trained on, among those the served model answers `neither` (asked first as
    evaluation traffic, which the window leaves out; the session's model is small,
    so it refuses only some). Returns the distinct photos and the answers' labels."""
    paths = unseen_kind_photos()
    probe = [(p.name, p.read_bytes()) for p in paths[:: max(1, len(paths) // 200)]]
    answers = classify_all(url, probe, EVALUATION_SOURCE, concurrency=4)
    refused = [photo for photo, a in zip(probe, answers, strict=True) if a.label == "neither"]
    assert len(refused) >= 3, f"the served model refuses {len(refused)} of {len(probe)}"
    wave = [refused[i % len(refused)] for i in range(count)]
    sent = classify_all(url, wave, "traffic-generator", concurrency=4)
    return {"distinct": len(refused), "labels": sorted({a.label for a in sent})}


@pytest.fixture(scope="module")
def drift_story(platform, served_champion):
    """Evaluations of an empty log (with an unreachable accuracy threshold), of 100
    unshifted requests, of a wave of non-pet photos, then of 150 darkened pet photos:
    (flow run, latest monitoring run) for each, and the traffic sent."""
    url, story = served_champion["url"], {}
    served = served_champion
    # The first evaluation fails twice over: no traffic yet, and an accuracy threshold the
    # small test model cannot reach. The message must name both.
    story["empty"] = (
        evaluate(platform, served, **{**LENIENT, "min_accuracy": 0.999}),
        monitoring_runs(platform)[1][0],
    )
    # The whole test set: a slice of it (60 photos were mostly cats) moved the colour
    # statistics of a small reference to the edge of the drift threshold.
    story["unshifted_traffic"] = send_traffic(url, TEST_IMAGES, UNSHIFTED)
    story["unshifted"] = evaluate(platform, served, **LENIENT), monitoring_runs(platform)[1][0]
    story["non_pet_traffic"] = non_pet_wave(url)
    story["non_pet"] = evaluate(platform, served, **LENIENT), monitoring_runs(platform)[1][0]
    story["darker_traffic"] = send_traffic(url, TEST_IMAGES, 150, shift="darker")
    story["darker"] = evaluate(platform, served, **LENIENT), monitoring_runs(platform)[1][0]
    return story


def test_too_few_requests_is_not_enough_data(drift_story):
    flow_run, mlflow_run = drift_story["empty"]
    assert flow_run["state"]["type"] == "FAILED"
    assert "not enough data to judge drift: 0 requests" in flow_run["state"]["message"]
    # Accuracy was still measured and logged: 100 test images through the service.
    assert mlflow_run.data.metrics["requests"] == 100
    assert mlflow_run.data.metrics["errors"] == 0


def test_unshifted_traffic_shows_no_drift(platform, served_champion, drift_story):
    assert drift_story["unshifted_traffic"] == {200: UNSHIFTED}
    flow_run, latest = drift_story["unshifted"]
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
    # The flow's accuracy is the share of test images the service labels right (within two
    # images: a near-tie may flip with how requests happened to be batched).
    items, class_names = discover_images(TEST_IMAGES)
    photos = [(item.path.name, item.path.read_bytes()) for item in items]
    answers = classify_all(served_champion["url"], photos, EVALUATION_SOURCE)
    right = sum(a.label == class_names[i.label] for a, i in zip(answers, items, strict=True))
    assert latest.data.metrics["accuracy"] == pytest.approx(right / len(items), abs=0.02)
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "drift_share"):
        assert key in latest.data.metrics
    # The traffic rows; the flow's own evaluation requests are left out, and so are the
    # (rare) pet photos answered neither: drift is judged on cat and dog answers.
    assert latest.data.metrics["window_requests"] == UNSHIFTED
    neither = latest.data.metrics["neither_requests"]
    assert latest.data.metrics["drift_rows"] == UNSHIFTED - neither
    assert latest.data.metrics["neither_share"] < 0.2 and "warning" not in latest.data.tags
    client = MlflowClient(platform["mlflow_uri"])
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id)}
    assert {"drift_report.html", "evaluation_report.json"} <= artifacts


def events_of_run(platform, name: str, flow_run_id: str) -> list[dict]:
    """Events `name` emitted inside flow run `flow_run_id` (Prefect relates them to it)."""
    run_resource = f"prefect.flow-run.{flow_run_id}"
    return [
        e
        for e in events_named(platform, name)
        if any(r["prefect.resource.id"] == run_resource for r in e["related"])
    ]


def test_a_wave_of_non_pet_photos_warns_and_raises_no_alarm(platform, drift_story):
    """Neither answers are reported on their own, and drift is judged on the pet answers:
    no drift alarm (which would start a retraining), a non-pet warning instead."""
    assert drift_story["non_pet_traffic"]["labels"] == ["neither"]
    flow_run, latest = drift_story["non_pet"]
    message = flow_run["state"]["message"]
    assert flow_run["state"]["type"] == "COMPLETED", message  # a warning, not a failure
    assert "non-pet share" in message and "data drift" not in message
    window = latest.data.metrics["window_requests"]
    assert latest.data.metrics["neither_requests"] >= NON_PET_WAVE
    assert latest.data.metrics["neither_share"] > 0.2
    assert latest.data.metrics["drift_rows"] == window - latest.data.metrics["neither_requests"]
    assert "non-pet share" in latest.data.tags["warning"]
    (warning,) = wait_for(
        lambda: events_of_run(platform, "catdog.traffic.non-pet-share", flow_run["id"]),
        120,
        "the non-pet warning event in the server's event store",
    )
    assert warning["payload"]["neither_share"] == pytest.approx(
        latest.data.metrics["neither_share"]
    )
    assert warning["payload"]["max_neither_share"] == 0.2
    for alarm in ("catdog.evaluation.drift-detected", "catdog.evaluation.accuracy-low"):
        assert events_of_run(platform, alarm, flow_run["id"]) == []


def test_darkened_traffic_is_detected_and_fails_the_flow(platform, drift_story):
    assert drift_story["darker_traffic"] == {200: 150}
    flow_run, _ = drift_story["darker"]
    assert flow_run["state"]["type"] == "FAILED"
    message = flow_run["state"]["message"]
    assert "data drift" in message and "brightness" in message
    # Shifted pet photos still raise the alarm that retrains, non-pet traffic or not.
    wait_for(
        lambda: events_of_run(platform, "catdog.evaluation.drift-detected", flow_run["id"]),
        120,
        "the drift alarm of the darkened traffic in the server's event store",
    )


def test_accuracy_below_threshold_fails_the_flow(drift_story):
    flow_run, _ = drift_story["empty"]
    assert flow_run["state"]["type"] == "FAILED"
    assert "is below 0.999" in flow_run["state"]["message"]


def test_evaluation_publishes_prefect_artifacts(platform, drift_story):
    artifacts = prefect_api(
        platform,
        "POST",
        "/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["evaluation", "drift-report"]}}},
    )
    keys = {a["key"] for a in artifacts}
    assert keys == {"evaluation", "drift-report"}
    summary = next(a for a in artifacts if a["key"] == "evaluation")
    assert "accuracy (100 test images)" in summary["data"]
    assert "answered neither (non-pet share)" in summary["data"]
