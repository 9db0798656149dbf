"""Settings registry, local plans, route choice (IWRR over flow, health, KV fit), stop strings."""

import pytest

from helix_worker.envs import Settings, describe, env_name
from helix_worker.errors import ServingError
from helix_worker.fleet.layouts import manual_plan, proportional_split
from helix_worker.frontend.routes import RouteTable
from helix_worker.frontend.text import StopMatcher


def test_settings_come_from_helix_variables_with_overrides() -> None:
    settings = Settings.from_env({"HELIX_KV_CACHE_TOKENS": "123", "HELIX_SLOWDOWN": "2.5", "OTHER": "x"}, slowdown=3.0)
    assert settings.kv_cache_tokens == 123 and settings.slowdown == 3.0
    with pytest.raises(ServingError, match="HELIX_MAX_BATCH_TOKENS='many'"):
        Settings.from_env({"HELIX_MAX_BATCH_TOKENS": "many"})
    assert env_name("kv_cache_tokens") in describe()
    assert Settings.from_env({}).data_channel == "tcp"
    assert Settings.from_env({"HELIX_DATA_CHANNEL": "grpc"}).data_channel == "grpc"
    with pytest.raises(ServingError, match="HELIX_DATA_CHANNEL='TCP': use one of tcp, grpc"):
        Settings.from_env({"HELIX_DATA_CHANNEL": "TCP"})
    assert Settings.from_env({"HELIX_MAX_IN_FLIGHT": "8"}).max_in_flight == 8
    with pytest.raises(ServingError, match="HELIX_KV_BLOCK_TOKENS=0: give a positive number of tokens"):
        Settings.from_env({"HELIX_KV_BLOCK_TOKENS": "0"})
    with pytest.raises(ServingError, match=r"HELIX_KV_WATERMARK=1.5: give a share in \[0, 1\)"):
        Settings.from_env({"HELIX_KV_WATERMARK": "1.5"})
    with pytest.raises(ServingError, match="HELIX_MAX_IN_FLIGHT=-1: give a positive number"):
        Settings.from_env({"HELIX_MAX_IN_FLIGHT": "-1"})


def test_manual_plans_must_cover_all_layers() -> None:
    with pytest.raises(ServingError, match="ends at layer 4"):
        manual_plan("m", 6, [[("a", 0, 4)]])
    with pytest.raises(ServingError, match="contiguously"):
        manual_plan("m", 6, [[("a", 0, 2), ("b", 3, 6)]])


def test_proportional_split_follows_speed() -> None:
    assert proportional_split(12, [1.0, 2.0, 1.0]) == [(0, 3), (3, 9), (9, 12)]
    assert proportional_split(3, [1.0, 100.0, 1.0]) == [(0, 1), (1, 2), (2, 3)]  # at least one layer each
    with pytest.raises(ServingError):
        proportional_split(2, [1.0, 1.0, 1.0])


def _table(weights=(3.0, 1.0)) -> RouteTable:
    plan = manual_plan("m", 4, [[("a", 0, 2), ("b", 2, 4)], [("c", 0, 4)]], list(weights))
    table = RouteTable(plan, {"a": "h:1", "b": "h:2", "c": "h:3"}, watermark=0.1)
    for node in table.nodes:
        table.up[node] = True
        table.set_capacity(node, 1000, 10)  # 100 blocks of 10 tokens, 10 kept free
    return table


def test_routes_follow_the_flow_weights() -> None:
    table = _table()
    picks = [table.choose(10).index for _ in range(1200)]
    assert picks.count(0) / len(picks) == pytest.approx(0.75, abs=0.01)  # flow 3 : 1


def test_routes_skip_down_and_full_pipelines() -> None:
    table = _table()
    table.up["b"] = False
    assert {table.choose(10).index for _ in range(10)} == {1}
    table.up["b"] = True
    table.hold(table.routes[1], 0, 891)  # 90 blocks on c: one more would cut into the watermark
    assert table.held["c"] == 90
    assert {table.choose(10).index for _ in range(10)} == {0}
    table.hold(table.routes[0], 0, 800)  # 80 blocks on a and b: room for 10 more, not 11
    assert table.choose(100).index == 0 and table.choose(101) is None
    table.hold(table.routes[0], 800, 0)
    assert table.held["a"] == 0 and table.choose(10).index == 0
    assert table.largest_fit() == 1000


def test_routes_need_an_address_for_every_node() -> None:
    plan = manual_plan("m", 4, [[("a", 0, 4)]])
    with pytest.raises(ServingError, match="no address for plan node"):
        RouteTable(plan, {})


def test_stop_matcher_holds_back_possible_stop_prefixes() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("abcE") == ("abc", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("x") == ("ENx", False)
    assert matcher.feed("yyEND and more") == ("yy", True)
    done = StopMatcher(("zz",))
    assert done.feed("az") == ("a", False) and done.flush() == "z"

