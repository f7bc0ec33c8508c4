"""The closed loop's switch: `make loop-on` / `make loop-off`.

    python -m catdog_runtime.loop on|off

Stored in $CATDOG_RUN_DIR/loop, which scripts/env.sh reads as CATDOG_LOOP, so that every
later `make deploy` creates the automations enabled or not; and applied at once to the
automations the deployments of prefect.yaml own, through the Prefect API (one PATCH
each), without re-deploying.
"""

from __future__ import annotations

import argparse

import yaml

from catdog_runtime.prefect_api import PrefectAPI, PrefectAPIError
from catdog_runtime.processes import ROOT
from catdog_runtime.services import run_dir


def loop_automation_names(project_file=ROOT / "prefect.yaml") -> list[str]:
    """The names of the automations prefect.yaml's deployments declare (their triggers)."""
    project = yaml.safe_load(project_file.read_text())
    return sorted(
        {trigger["name"] for d in project["deployments"] for trigger in d.get("triggers", [])}
    )


def switch_automations(api: PrefectAPI, enabled: bool) -> list[str]:
    """Enable or disable every loop automation on the server; the names switched."""
    names = loop_automation_names()
    on_server = {a["name"]: a for a in api.call("POST", "/automations/filter", json={})}
    missing = [name for name in names if name not in on_server]
    if missing:
        raise PrefectAPIError(
            f"the Prefect server at {api.url} has no automation {', '.join(missing)}: "
            "register the deployments with `make deploy`"
        )
    for name in names:
        api.call("PATCH", f"/automations/{on_server[name]['id']}", json={"enabled": enabled})
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", choices=["on", "off"])
    args = parser.parse_args(argv)
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loop").write_text(f"{args.state}\n")
    try:
        names = switch_automations(PrefectAPI(), enabled=args.state == "on")
    except PrefectAPIError as exc:
        raise SystemExit(
            f"loop {args.state} stored in {folder / 'loop'}, not applied: {exc}"
        ) from None
    done = "enabled" if args.state == "on" else "disabled"
    print(f"loop {args.state}: {', '.join(names)} {done}")


if __name__ == "__main__":
    main()
