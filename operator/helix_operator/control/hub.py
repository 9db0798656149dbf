"""The Hub access the operator pins hf:// weights with: the pods' own, from the credentials Secret.

The init containers get every key of `spec.model.credentialsSecret` as environment
variables, so the operator reads HF_TOKEN and HF_ENDPOINT from the same Secret (HF_ENDPOINT
falls back to the operator's environment, then huggingface.co) and resolves what they will see.
"""

import base64
import binascii
import os

from helix_operator.api.spec import ClusterSpec
from helix_operator.api.weights_uri import hf_parts
from helix_operator.control.kube import Kube, Ref
from helix_operator.planning.revision import HF_ENDPOINT, HubAccess, WeightsUnresolved


async def hub_access(kube: Kube, namespace: str, spec: ClusterSpec) -> HubAccess:
    """Endpoint and token for resolving `spec.weights_uri` (defaults when it is not hf://)."""
    values: dict[str, str] = {}
    if hf_parts(spec.weights_uri) and spec.credentials_secret:
        secret = await kube.get(Ref("v1", "secrets", namespace, spec.credentials_secret))
        if secret is None:
            raise WeightsUnresolved(f"spec.model.credentialsSecret {spec.credentials_secret!r} does not exist in "
                                    f"namespace {namespace}")
        try:
            values = {k: base64.b64decode(v).decode().strip() for k, v in (secret.get("data") or {}).items()
                      if k in ("HF_TOKEN", "HF_ENDPOINT")}
        except (binascii.Error, UnicodeDecodeError):
            raise WeightsUnresolved(f"Secret {spec.credentials_secret}: HF_TOKEN or HF_ENDPOINT is not base64 "
                                    "UTF-8 text") from None
    endpoint = values.get("HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT
    return HubAccess(endpoint.rstrip("/"), values.get("HF_TOKEN") or None)
