"""The loop's automations as prefect.yaml declares them, rendered as `prefect deploy` does."""

import pytest
import yaml

from catdog_runtime.processes import ROOT
from flows import events

EMITTED = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}


def rendered_triggers(monkeypatch, enabled: str) -> dict:
    """Each deployment's triggers, templated from the environment, validated by Prefect."""
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("CATDOG_LOOP_ENABLED", enabled)
    monkeypatch.setenv("CATDOG_RETRAIN_COOLDOWN", "PT6H")
    monkeypatch.setenv("CATDOG_ROLLOUT_DELAY", "PT10M")
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {}
    specs = {d["name"]: d.get("triggers", []) for d in project["deployments"]}
    specs["rollout"] = [project["definitions"]["triggers"]["rollout_on_bento"]]
    for name, triggers in specs.items():
        templated = []
        for spec in triggers:  # as prefect.cli.deploy._core does: parameters stay templates
            spec = dict(spec)
            parameters = spec.pop("parameters", None)
            spec = apply_values(spec, {}, warn_on_notset=False)
            if parameters is not None:
                spec["parameters"] = parameters
            templated.append(spec)
        found[name] = _initialize_deployment_triggers(name, templated)
    return found


@pytest.mark.parametrize("switch, expected", [("true", True), ("false", False)])
def test_one_switch_sets_enabled_on_every_trigger(monkeypatch, switch, expected):
    triggers = rendered_triggers(monkeypatch, switch)
    every = [t for ts in triggers.values() for t in ts]
    assert len(every) == 4
    assert all(t.enabled is expected for t in every)


def test_the_chain_listens_to_events_the_flows_emit(monkeypatch):
    triggers = rendered_triggers(monkeypatch, "true")
    expects = {name: set().union(*(t.expect for t in ts)) for name, ts in triggers.items() if ts}
    assert expects == {
        "retrain": {events.DRIFT_DETECTED, events.ACCURACY_LOW, events.DATA_NEW_VERSION},
        "champion": {events.PROMOTED},
        "rollout": {events.BENTO_BUILT},
    }
    assert set().union(*expects.values()) <= EMITTED
    # Many photos answered `neither` is a warning for a person, never a retraining.
    assert events.NON_PET_SHARE in EMITTED
    assert events.NON_PET_SHARE not in set().union(*expects.values())
    (package,) = triggers["champion"]
    assert package.parameters == {
        "model_name": "{{ event.payload.model_name }}",
        "version": "{{ event.payload.version }}",
    }
    (rollout,) = triggers["rollout"]
    assert rollout.parameters == {"bento_tag": "{{ event.payload.bento_tag }}"}
    assert rollout.schedule_after.total_seconds() == 600


def test_retraining_has_a_cool_down_and_runs_one_at_a_time(monkeypatch):
    for trigger in rendered_triggers(monkeypatch, "true")["retrain"]:
        assert trigger.posture == "Reactive" and trigger.threshold == 1
        assert trigger.within.total_seconds() == 6 * 3600
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (retrain,) = [d for d in project["deployments"] if d["name"] == "retrain"]
    assert retrain["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert retrain["entrypoint"] == "flows/train.py:train"
    # Retraining trains what train/transfer trains (one YAML anchor).
    (transfer,) = [d for d in project["deployments"] if d["name"] == "transfer"]
    assert retrain["parameters"]["config"] == transfer["parameters"]["config"]
    assert transfer["parameters"]["config"]["architecture"] == "efficientnet_lite2"


def test_the_switch_names_every_automation_the_deployments_own(monkeypatch):
    from catdog_runtime.loop import loop_automation_names

    triggers = rendered_triggers(monkeypatch, "true")
    declared = {t.name for ts in triggers.values() for t in ts}
    assert loop_automation_names() == sorted(declared)
    assert len(declared) == 4
