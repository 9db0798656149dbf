"""Hugging Face Hub checkpoints through `huggingface_hub`: one commit for every file.

The requested revision (a branch, tag or sha) is resolved to its commit sha once, with the
file list, and every file is then read at that sha, so a branch that moves during a rollout
never mixes two commits (the operator passes each pod the sha it resolved). Files stream
through the library's `http_get` (its retries resume within a run) into a partial file that a
restarted run continues (`weights_partial`); HF_ENDPOINT and HF_TOKEN as in every Hub client,
and the token is not sent on to a CDN host a download redirects to.

With a `cache` directory (a volume pods share), files land in huggingface_hub's cache layout
(`models--ORG--REPO/blobs/ETAG`, `snapshots/SHA/NAME` linking to the blob, `.no_exist/SHA/NAME`
for an absent optional file) and the checkpoint directory gets links into it: a second pod, or
a restarted one, finds the commit's files there and sends no request for them at all. Two
pods fetching one blob take turns (huggingface_hub's file lock); partial blobs resume.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import (
    _CACHED_NO_EXIST,
    HfApi,
    HfFileMetadata,
    get_hf_file_metadata,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from helix_worker.errors import ServingError
from helix_worker.weights.partial import complete, resume_from

HF_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"[0-9a-f]{40}")  # a revision that is already a commit sha
Log = Callable[[str], None]


@dataclass
class HuggingFace:
    uri: str
    repo: str
    revision: str
    endpoint: str = HF_ENDPOINT
    token: str | None = None
    log: Log = print
    cache: Path | None = None
    _sha: str = ""
    _files: frozenset[str] | None = None

    def resolve(self) -> str:
        """The commit sha `revision` names (resolved with the file list on first use, then fixed; a
        sha needs no request)."""
        if not self._sha and COMMIT.fullmatch(self.revision):
            self._sha = self.revision
        if not self._sha:
            self._list()
        return self._sha

    def _list(self) -> frozenset[str]:
        """The commit's file names (and its sha, when `revision` is a branch or tag)."""
        if self._files is None:
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
            if not self._sha:
                self.log(f"{self.uri}: revision {self.revision} resolved to commit {info.sha}")
            self._sha, self._files = str(info.sha), frozenset(s.rfilename for s in info.siblings or ())
        return self._files

    def has(self, name: str) -> bool:
        if self.cache is not None:
            cached = try_to_load_from_cache(self.repo, name, cache_dir=self.cache, revision=self.resolve())
            if cached is _CACHED_NO_EXIST or isinstance(cached, str):
                return isinstance(cached, str)
        present = name in self._list()
        if not present and self.cache is not None:  # as huggingface_hub records it: not asked again
            absent = self._storage() / ".no_exist" / self.resolve() / name
            absent.parent.mkdir(parents=True, exist_ok=True)
            absent.touch()
        return present

    def download(self, name: str, directory: Path) -> None:
        if self.cache is None:
            self._get(name, directory / name, *self._metadata(name))
            return
        pointer = self._storage() / "snapshots" / self.resolve() / name
        if not pointer.exists():
            self._into_cache(name, pointer)
        _link(directory / name, pointer.absolute())

    def _into_cache(self, name: str, pointer: Path) -> None:
        """The blob (fetched unless there) and the snapshot's link to it."""
        storage, (url, meta) = self._storage(), self._metadata(name)
        blob = storage / "blobs" / str(meta.etag)
        lock = storage.parent / ".locks" / storage.name / f"{meta.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        blob.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if not blob.exists():
                self._get(name, blob, url, meta)
        _link(pointer, Path(os.path.relpath(blob, pointer.parent)))
        if self.revision != self.resolve():  # a branch or tag: which commit it named, as huggingface_hub notes it
            ref = storage / "refs" / self.revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(self.resolve())

    def _storage(self) -> Path:
        """This repository's folder of the cache (only called with a cache)."""
        return Path(self.cache or "") / repo_folder_name(repo_id=self.repo, repo_type="model")

    def _metadata(self, name: str) -> tuple[str, HfFileMetadata]:
        if not self.has(name):
            raise ServingError(f"{self.uri}: {self.repo} at commit {self.resolve()[:12]} has no file {name}")
        url = hf_hub_url(self.repo, name, revision=self.resolve(), endpoint=self.endpoint)
        try:
            return url, get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint)
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
            raise ServingError(f"cannot fetch {name} from {self.uri} (run again to continue): {err}") from None

    def _get(self, name: str, target: Path, url: str, meta: HfFileMetadata) -> None:
        """`name` (at `url`, described by `meta`) into `target`, through a partial file a restarted run continues."""
        try:
            size = int(meta.size or 0)
            partial, have = resume_from(target, str(meta.etag), size, self.log)
            same_host = urlsplit(meta.location).netloc == urlsplit(url).netloc
            headers = build_hf_headers(token=(self.token or False) if same_host else False)
            with open(partial, "ab") as out:
                http_get(meta.location, out, resume_size=have, headers=headers, expected_size=size,
                         displayed_filename=name)
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
            raise ServingError(f"cannot fetch {name} from {self.uri} (run again to continue): {err}") from None
        complete(partial, target, size)


def _link(link: Path, target: Path) -> None:
    """`link` -> `target`, replacing whatever link was there (atomically: a reader never finds none)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)
