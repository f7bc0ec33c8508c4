"""model_lib.rollout.reconcile_plan: what serves against what `production` names."""

from __future__ import annotations

from model_lib.rollout import RETIRE, START, STOP, WEIGHT, Action, Served, reconcile_plan

OLD, NEW = "catdog-classifier:old", "catdog-classifier:new"


def kinds(actions: list[Action]) -> list[tuple]:
    return [
        (a.kind, a.bento_tag, a.port, a.count if a.kind == START else a.weight) for a in actions
    ]


def test_a_fleet_that_serves_production_at_full_weight_needs_nothing():
    recorded = [Served(4001, OLD, 100), Served(4002, OLD, 100)]
    running = {4001: OLD, 4002: OLD}
    assert reconcile_plan(OLD, recorded, {4001: 100, 4002: 100}, running) == []


def test_killed_between_the_switch_and_the_alias_move_goes_back_to_production():
    """The new version took all traffic, the old replicas are gone, the alias still names
    the old version: the old one is started again (as many replicas), then the new retired."""
    recorded = [Served(4003, NEW, 100), Served(4004, NEW, 100)]
    actions = reconcile_plan(OLD, recorded, {4003: 100, 4004: 100}, {4003: NEW, 4004: NEW})
    assert kinds(actions) == [
        (START, OLD, None, 2),
        (RETIRE, NEW, 4003, None),
        (RETIRE, NEW, 4004, None),
    ]
    assert "production names it, HAProxy serves catdog-classifier:new" in str(actions[0])


def test_an_interrupted_canary_is_withdrawn_and_the_stable_replicas_stay():
    recorded = [Served(4001, OLD, 100), Served(4005, NEW, 11)]
    actions = reconcile_plan(OLD, recorded, {4001: 100, 4005: 11}, {4001: OLD, 4005: NEW})
    assert kinds(actions) == [(RETIRE, NEW, 4005, None)]


def test_production_replicas_left_at_a_canary_weight_get_full_weight():
    """HAProxy's live weight counts, not the one recorded before the kill."""
    recorded = [Served(4006, OLD, 100)]
    actions = reconcile_plan(OLD, recorded, {4006: 11}, {4006: OLD})
    assert kinds(actions) == [(WEIGHT, OLD, 4006, 100)]


def test_a_production_replica_left_draining_is_put_back_before_the_candidate_goes():
    """Killed while retiring the old replicas: HAProxy reports the draining one at weight 0
    (catdog_runtime.balancer `reconcile`); it gets full weight, the candidate is retired."""
    recorded = [Served(4001, OLD, 100), Served(4003, NEW, 100)]
    actions = reconcile_plan(OLD, recorded, {4001: 0, 4003: 100}, {4001: OLD, 4003: NEW})
    assert kinds(actions) == [(WEIGHT, OLD, 4001, 100), (RETIRE, NEW, 4003, None)]


def test_servers_and_processes_the_state_file_does_not_know_are_removed():
    """A kill between `add server` and the state write, or between starting a replica
    and attaching it."""
    recorded = [Served(4001, OLD, 100)]
    in_haproxy = {4001: 100, 4007: 0}
    running = {4001: OLD, 4007: NEW, 4008: NEW}
    assert kinds(reconcile_plan(OLD, recorded, in_haproxy, running)) == [
        (RETIRE, NEW, 4007, None),
        (STOP, NEW, 4008, None),
    ]


def test_first_deployment_starts_one_replica():
    assert kinds(reconcile_plan(NEW, [], {}, {})) == [(START, NEW, None, 1)]


def test_no_target_retires_everything():
    recorded = [Served(4001, OLD, 100)]
    assert kinds(reconcile_plan(None, recorded, {4001: 100}, {4001: OLD})) == [
        (RETIRE, OLD, 4001, None)
    ]
