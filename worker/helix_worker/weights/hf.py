"""Hugging Face Hub checkpoints through `huggingface_hub`: one commit for every file.

The requested revision (a branch, tag or sha) is resolved to its commit sha once, with the
file list, and every file is then read at that sha, so a branch that moves during a rollout
never mixes two commits (the operator passes each pod the sha it resolved). Files stream
through the library's `http_get` (its retries resume within a run) into a partial file that a
restarted run continues (`weights_partial`); HF_ENDPOINT and HF_TOKEN as in every Hub client,
and the token is not sent on to a CDN host a download redirects to.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from helix_worker.errors import ServingError
from helix_worker.weights.partial import complete, resume_from

HF_ENDPOINT = "https://huggingface.co"
Log = Callable[[str], None]


@dataclass
class HuggingFace:
    uri: str
    repo: str
    revision: str
    endpoint: str = HF_ENDPOINT
    token: str | None = None
    log: Log = print
    _sha: str = ""
    _files: frozenset[str] = field(default_factory=frozenset)

    def resolve(self) -> str:
        """The commit sha `revision` names (resolved with the file list on first use, then fixed)."""
        if not self._sha:
            try:
                info = HfApi(endpoint=self.endpoint, token=self.token or False).model_info(self.repo,
                                                                                          revision=self.revision)
            except GatedRepoError:
                raise ServingError(f"{self.uri}: {self.repo} is gated; set HF_TOKEN (a key of "
                                   "spec.model.credentialsSecret) for an account that accepted its terms") from None
            except RevisionNotFoundError:
                raise ServingError(f"{self.uri}: {self.repo} has no revision {self.revision!r}") from None
            except RepositoryNotFoundError:
                raise ServingError(f"{self.uri}: no repository {self.repo} on {self.endpoint} (a private one needs "
                                   "HF_TOKEN, a key of spec.model.credentialsSecret)") from None
            except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
                raise ServingError(f"{self.uri}: cannot reach {self.endpoint}: {err}") from None
            self._sha, self._files = str(info.sha), frozenset(s.rfilename for s in info.siblings or ())
            self.log(f"{self.uri}: revision {self.revision} resolved to commit {self._sha}")
        return self._sha

    def has(self, name: str) -> bool:
        self.resolve()
        return name in self._files

    def download(self, name: str, directory: Path) -> None:
        if not self.has(name):
            raise ServingError(f"{self.uri}: {self.repo} at commit {self.resolve()[:12]} has no file {name}")
        url = hf_hub_url(self.repo, name, revision=self.resolve(), endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint)
            size = int(meta.size or 0)
            partial, have = resume_from(directory / name, str(meta.etag), size, self.log)
            same_host = urlsplit(meta.location).netloc == urlsplit(url).netloc
            headers = build_hf_headers(token=(self.token or False) if same_host else False)
            with open(partial, "ab") as out:
                http_get(meta.location, out, resume_size=have, headers=headers, expected_size=size,
                         displayed_filename=name)
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
            raise ServingError(f"cannot fetch {name} from {self.uri} (run again to continue): {err}") from None
        complete(partial, directory / name, size)
