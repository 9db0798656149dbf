"""hf:// weights pinned once per plan: the operator (kopf on kmock) resolves the branch at the
stand-in Hub the fetcher's tests use, with the token and endpoint of the credentials Secret,
and every pod of the plan fetches that commit until the next replan."""

import base64
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from opkit import GFD_PRODUCT, POOL_LABEL, REGION, fleet_spec, node

from helix_operator.planning.revision import HubAccess, WeightsUnresolved, resolve_revision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # the Hub stand-in of the fetcher's tests
from weights_standins import HubServer, serving

NS = "inference"
BASE = f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters"
HXC = "helix.dev/v1alpha1/helixclusters"
REPO, OLD, NEW, TOKEN = "tiny/llama", "a" * 40, "b" * 40, "hf_operator"

pytestmark = pytest.mark.timeout(90)


def _cluster(name: str, uri: str) -> dict[str, Any]:
    spec = fleet_spec(timeLimitSeconds=2)
    spec["model"] = {"name": "llama3-8b", "weightsUri": uri, "credentialsSecret": {"name": "hf"}}
    spec["nodePools"] = [{"name": "only", "selector": {"matchLabels": {POOL_LABEL: "hf"}}}]
    return {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def _fetched(operator: Any) -> set[str]:
    """The URI every init container of the worker pods and the front end fetches."""
    pods = [p["spec"] for p in operator.live("v1/pods", NS)]
    pods += [d["spec"]["template"]["spec"] for d in operator.live("apps/v1/deployments", NS)]
    return {init["command"][3] for spec in pods for init in spec.get("initContainers", [])}


def _status(operator: Any, name: str) -> dict[str, Any]:
    return (operator.get(HXC, NS, name) or {}).get("status") or {}


async def test_hf_revision_is_resolved_once_per_plan_and_kept_until_a_replan(operator) -> None:
    hub = HubServer(REPO, {OLD: {"config.json": b"{}"}, NEW: {"config.json": b"{}"}}, {"main": OLD}, TOKEN)
    with serving(hub):
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": NS},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in
                           {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}.items()}}
        await operator.request("post", f"/api/v1/namespaces/{NS}/secrets", secret)
        for i in range(2):
            await operator.request("post", "/api/v1/nodes", node(f"t4-{i}", {GFD_PRODUCT: "Tesla-T4",
                                                                            REGION: "onprem-ams", POOL_LABEL: "hf"}))
        await operator.request("post", BASE, _cluster("llama", f"hf://{REPO}"))

        def running(revision: str) -> bool:
            status = _status(operator, "llama")
            return (status.get("phase") == "Running" and status.get("model") == {"revision": revision}
                    and status["rollout"]["state"] == "Complete" and _fetched(operator) == {f"hf://{REPO}@{revision}"})

        await operator.eventually(lambda: running(OLD),
                                  explain=lambda: (_status(operator, "llama"), _fetched(operator)))
        infos = [path for _, path, _, auth in hub.log if path.startswith("/api/models/")]
        assert infos == [f"/api/models/{REPO}/revision/main"], "one lookup for the plan, none per pod"
        assert all(auth == f"Bearer {TOKEN}" for *_, auth in hub.log)

        # The branch moves; a replaced pod (here: deleted) still gets the plan's commit.
        hub.refs["main"] = NEW
        victim = operator.live("v1/pods", NS)[0]["metadata"]["name"]
        await operator.request("delete", f"/api/v1/namespaces/{NS}/pods/{victim}")
        await operator.eventually(lambda: len(operator.live("v1/pods", NS)) == 2 and running(OLD))

        # A replan (a spec change) pins the branch anew and replaces every pod.
        await operator.request("patch", f"{BASE}/llama", {"spec": {"planner": {"timeLimitSeconds": 3}}})
        await operator.eventually(lambda: running(NEW),
                                  explain=lambda: (_status(operator, "llama"), _fetched(operator)))

        # A repository the Hub does not have: the plan fails with a condition and a Warning event that say so.
        await operator.request("post", BASE, _cluster("missing", "hf://tiny/nothing"))
        await operator.eventually(lambda: ("Warning", "WeightsUnresolved") in operator.events(NS, "missing"))
        planned = next(c for c in _status(operator, "missing")["conditions"] if c["type"] == "Planned")
        assert (planned["status"], planned["reason"]) == ("False", "WeightsUnresolved")
        assert "has no repository tiny/nothing" in planned["message"] and hub.url in planned["message"]


def test_resolution_errors_say_what_to_change() -> None:
    with serving(HubServer(REPO, {OLD: {}}, {"main": OLD}, TOKEN, gated=True)) as hub:
        assert resolve_revision(f"hf://{REPO}", HubAccess(hub.url, TOKEN)) == OLD
        assert resolve_revision(f"hf://{REPO}@{OLD}", HubAccess(hub.url, TOKEN)) == OLD
        with pytest.raises(WeightsUnresolved, match="tiny/llama is gated; put HF_TOKEN"):
            resolve_revision(f"hf://{REPO}", HubAccess(hub.url))
        with pytest.raises(WeightsUnresolved, match="has no branch, tag or commit 'v9'"):
            resolve_revision(f"hf://{REPO}@v9", HubAccess(hub.url, TOKEN))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"  # a port no one listens on
    with pytest.raises(WeightsUnresolved, match=f"{nobody} did not answer"):
        resolve_revision(f"hf://{REPO}", HubAccess(nobody, TOKEN))
    assert resolve_revision("s3://bucket/model", HubAccess()) is None and resolve_revision(None, HubAccess()) is None
