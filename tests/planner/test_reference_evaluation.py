"""The evaluator and the Helix capacity model reproduce the paper's published objectives."""

import pytest
from plankit import CASES, reference_case

from helix_planner.flow import evaluate
from helix_planner.io.helix_ini import dump_layout_ini, load_layout_ini


@pytest.mark.parametrize("case", list(CASES))
def test_published_helix_layout_max_flow_matches_paper(reference, catalog, case: str) -> None:
    cluster, model, capacity, published = reference_case(reference, catalog, case)
    layout = load_layout_ini(reference / "layouts" / CASES[case][1] / "helix.ini", cluster)
    result = evaluate(cluster, model, capacity, layout)
    assert result.value == pytest.approx(published, rel=0.005)
    assert result.bottlenecks, "a saturated min cut names what limits the flow"


def test_helix_capacity_depends_on_cluster_composition(reference, catalog) -> None:
    single, model, single_cap, _ = reference_case(reference, catalog, "single24")
    _, _, hetero_cap, _ = reference_case(reference, catalog, "hetero42")
    assert single_cap.max_layers("A100") == 12
    assert single_cap.capacity("A100", 8) != pytest.approx(hetero_cap.capacity("A100", 8), rel=1e-3)
    caps = [single_cap.capacity("A100", k) for k in range(1, 13)]
    assert caps == sorted(caps, reverse=True), "more layers per node means fewer tokens/s through it"


def test_layout_ini_round_trip(reference, catalog, tmp_path) -> None:
    cluster, _, _, _ = reference_case(reference, catalog, "geo24")
    layout = load_layout_ini(reference / "layouts" / "geo24-llama70b" / "helix.ini", cluster)
    written = tmp_path / "layout.ini"
    written.write_text(dump_layout_ini(layout, cluster))
    assert load_layout_ini(written, cluster) == layout


def test_geo24_regions_are_inferred_from_fast_links(reference, catalog) -> None:
    cluster, _, _, _ = reference_case(reference, catalog, "geo24")
    by_region: dict[str, list[str]] = {}
    for node in cluster.nodes:
        by_region.setdefault(node.region, []).append(node.gpu)
    assert sorted(sorted(g) for g in by_region.values()) == sorted([
        ["A100"] * 4, sorted(["L4"] * 2 + ["T4"] * 8), sorted(["L4"] * 6 + ["T4"] * 4)])
