"""One Hugging Face commit per plan: `hf://org/repo[@revision]` resolved to a sha when planning.

Every pod of a plan then fetches `hf://org/repo@<sha>`, so two pods started after a branch
moved still hold the same weights; the branch is read again only at the next replan. The
lookup is `huggingface_hub`'s model_info with the token and endpoint the pods get (the
credentials Secret's HF_TOKEN and HF_ENDPOINT), and runs in the planner's thread.
"""

from dataclasses import dataclass

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from helix_operator.api.weights_uri import hf_parts

HF_ENDPOINT = "https://huggingface.co"
LOOKUP_SECONDS = 30.0  # a Hub that does not answer fails the plan (retried later) instead of holding the planner


class WeightsUnresolved(Exception):
    """The weights URI names no commit the operator can see."""

    reason = "WeightsUnresolved"


@dataclass(frozen=True)
class HubAccess:
    """How the operator reaches the Hub: as the pods do, with the credentials Secret's values."""

    endpoint: str = HF_ENDPOINT
    token: str | None = None


def resolve_revision(uri: str | None, access: HubAccess) -> str | None:
    """The commit sha the hf:// `uri` names now; None for other URIs. Blocking (network)."""
    parts = hf_parts(uri)
    if parts is None:
        return None
    repo, revision = parts
    where = f"{uri}: {access.endpoint}"
    try:
        info = HfApi(endpoint=access.endpoint, token=access.token or False).model_info(repo, revision=revision,
                                                                                      timeout=LOOKUP_SECONDS)
    except GatedRepoError:
        raise WeightsUnresolved(f"{uri}: {repo} is gated; put HF_TOKEN of an account that accepted its terms in "
                                "spec.model.credentialsSecret") from None
    except RevisionNotFoundError:
        raise WeightsUnresolved(f"{uri}: {repo} has no branch, tag or commit {revision!r}") from None
    except RepositoryNotFoundError:
        raise WeightsUnresolved(f"{where} has no repository {repo} (a private one needs HF_TOKEN in "
                                "spec.model.credentialsSecret)") from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        raise WeightsUnresolved(f"{where} did not answer: {err}") from None
    if not info.sha:
        raise WeightsUnresolved(f"{where} gave no commit for {repo}@{revision}")
    return str(info.sha)
