"""The platform's Prefect events: names, resource ids and one `emit()` for every flow.

Automations in prefect.yaml (deployment `triggers:`) react to these names, so
they are written once here. The primary resource of a model event is
`catdog.model.<registered-name>.<version>`; the data version (md5 of data.dvc's
out) and the bento travel as related resources, so the UI's event feed links an
event to the model, the data and the bento it concerns. Inside a flow run,
Prefect adds the flow run, flow and deployment as related resources itself:
that is how a run started by an automation is linked to the event behind it.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.events import emit_event

DRIFT_DETECTED = "catdog.evaluation.drift-detected"
ACCURACY_LOW = "catdog.evaluation.accuracy-low"
EVALUATION_OK = "catdog.evaluation.ok"
# Many requests answered `neither`: people upload other things. A warning for a
# person; deliberately not an alarm that retrains (no trigger expects it).
NON_PET_SHARE = "catdog.traffic.non-pet-share"
CANDIDATE_REGISTERED = "catdog.model.candidate-registered"
PROMOTED = "catdog.model.promoted"
REJECTED = "catdog.model.rejected"
BENTO_BUILT = "catdog.bento.built"
DATA_NEW_VERSION = "catdog.data.new-version"
# Emitted by deploy/rollout (branch `rollout`); named here so every name is in one place.
ROLLOUT_COMPLETED = "catdog.rollout.completed"
ROLLED_BACK = "catdog.rollout.rolled-back"


def model_resource(model_name: str, version: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"catdog.model.{model_name}.{version}",
        "prefect.resource.name": f"{model_name} v{version}",
        "catdog.model.name": model_name,
        "catdog.model.version": str(version),
    }


def data_resource(data_version: str, role: str | None = "data-version") -> dict[str, str]:
    """A data version as a related resource (`role`), or as the primary one (role None)."""
    resource = {
        "prefect.resource.id": f"catdog.data.{data_version}",
        "prefect.resource.name": f"data {data_version[:8]}",
        "catdog.data.version": data_version,
    }
    return resource | ({"prefect.resource.role": role} if role else {})


def bento_resource(bento_tag: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"catdog.bento.{bento_tag}",
        "prefect.resource.role": "bento",
        "prefect.resource.name": bento_tag,
    }


def emit(name: str, resource: dict[str, str], payload: dict[str, Any], related=()) -> None:
    """Emit one event; its payload is what the UI's event feed shows and triggers template."""
    event = emit_event(event=name, resource=resource, related=list(related), payload=payload)
    if event is None:  # events are off in this Prefect client (PREFECT_API_URL unset)
        get_run_logger().warning("event %s not emitted: no Prefect API to send it to", name)
    else:
        get_run_logger().info("event %s (%s) emitted", name, resource["prefect.resource.id"])
