import pytest

from orchestrator.errors import InputError
from orchestrator.core.placement import NodeInfo, PlacementRequest, Slot, parse_constraint, place

NODES = [NodeInfo("prod-1", {"role": "web", "zone": "a"}), NodeInfo("prod-2", {"role": "web", "zone": "b"}),
         NodeInfo("prod-3", {"role": "db"})]


def nodes_of(slots):
    return [s.node for s in slots]


def test_without_replicas_runs_once_on_first_eligible_node():
    out = place([PlacementRequest("db", constraints=(parse_constraint("node.labels.role == db"),))], NODES)
    assert out["db"] == [Slot("db", 1, "prod-3")]
    out = place([PlacementRequest("cache")], NODES)
    assert nodes_of(out["cache"]) == ["prod-1"]


def test_replicas_spread_over_eligible_nodes():
    req = PlacementRequest("web", replicas=4, constraints=(parse_constraint("node.labels.role==web"),))
    assert nodes_of(place([req], NODES)["web"]) == ["prod-1", "prod-2", "prod-1", "prod-2"]


def test_single_services_stay_together_on_the_first_eligible_node():
    # other services' replicas are not counted: a db and its migration job share a volume
    out = place([PlacementRequest("db"), PlacementRequest("migrate"), PlacementRequest("web", replicas=3)], NODES)
    assert [out[s][0].node for s in ("db", "migrate")] == ["prod-1", "prod-1"]
    assert nodes_of(out["web"]) == ["prod-1", "prod-2", "prod-3"]


def test_placement_is_stable_when_existing_replicas_are_eligible():
    existing = [Slot("web", 1, "prod-2"), Slot("web", 2, "prod-2")]
    out = place([PlacementRequest("web", replicas=3)], NODES, existing)
    assert nodes_of(out["web"]) == ["prod-2", "prod-2", "prod-1"]


def test_scale_down_keeps_low_replicas_and_moves_ineligible_ones():
    existing = [Slot("web", 1, "prod-3"), Slot("web", 2, "prod-1"), Slot("web", 3, "prod-2")]
    req = PlacementRequest("web", replicas=2, constraints=(parse_constraint("node.labels.role != db"),))
    assert nodes_of(place([req], NODES, existing)["web"]) == ["prod-2", "prod-1"]


def test_global_mode_runs_on_every_eligible_node():
    req = PlacementRequest("agent", global_mode=True, constraints=(parse_constraint("node.hostname != prod-3"),))
    assert place([req], NODES)["agent"] == [Slot("agent", 1, "prod-1"), Slot("agent", 2, "prod-2")]


def test_no_eligible_node_is_bad_input_naming_the_constraint():
    req = PlacementRequest("web", constraints=(parse_constraint("node.labels.role == gpu"),), file="c.yaml", line=9)
    with pytest.raises(InputError) as err:
        place([req], NODES)
    text = err.value.render()
    assert "c.yaml:9: services.web.deploy.placement.constraints" in text
    assert "node.labels.role == gpu" in text


def test_unreadable_constraint():
    with pytest.raises(InputError, match="cannot read placement constraint"):
        parse_constraint("role=web")
