"""S3 checkpoints through `botocore`: the standard credential chain, resumable downloads.

Credentials come from botocore's chain, as in every AWS tool: environment keys, the shared
config and credentials files (AWS_PROFILE), a web identity token (IRSA:
AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), the container credentials endpoint (EKS Pod
Identity, ECS), then the instance metadata service. With none, reads are anonymous (public
buckets). AWS_ENDPOINT_URL(_S3) selects an S3-compatible store, addressed path-style.
A download continues, within a run and after a restart, from what its partial file holds
(`weights_partial`), with ranged GETs pinned to the object's ETag.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from helix_worker.errors import ServingError
from helix_worker.weights.partial import complete, resume_from

CHUNK = 8 << 20
RESUMES = 5  # a connection cut this often within one file fails it (the next run resumes again)
Log = Callable[[str], None]
ABSENT = {"404", "NoSuchKey", "403", "AccessDenied"}  # S3 says 403 for a missing key to callers that may not list


@dataclass
class S3:
    uri: str
    bucket: str
    prefix: str
    region: str | None = None
    endpoint: str | None = None
    log: Log = print
    _client: Any = field(default=None, repr=False)

    def client(self) -> Any:
        if self._client is None:
            session = botocore.session.get_session()
            signed = session.get_credentials() is not None
            config = Config(signature_version=None if signed else UNSIGNED, retries={"mode": "standard"},
                            s3={"addressing_style": "path"} if self.endpoint else {})
            self._client = session.create_client("s3", region_name=self.region, endpoint_url=self.endpoint,
                                                 config=config)
            if not signed:
                self.log(f"{self.uri}: no AWS credentials found; reading anonymously")
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        try:
            self._call("head_object", Bucket=self.bucket, Key=self.key(name))
        except _Missing:
            return False
        return True

    def download(self, name: str, directory: Path) -> None:
        key = self.key(name)
        try:
            head = self._call("head_object", Bucket=self.bucket, Key=key)
        except _Missing as err:
            raise ServingError(f"cannot fetch {name} from {self.uri}: {err}") from None
        size, etag = int(head["ContentLength"]), head["ETag"]
        partial, have = resume_from(directory / name, etag, size, self.log)
        mark, cuts = have, 0
        with open(partial, "ab") as out:
            while have < size:  # IfMatch: an object replaced meanwhile fails here; the next run starts it over
                body = self._call("get_object", Bucket=self.bucket, Key=key, IfMatch=etag, Range=f"bytes={have}-")
                try:
                    for chunk in body["Body"].iter_chunks(CHUNK):
                        out.write(chunk)
                        have += len(chunk)
                        if have - mark >= size // 10 and have < size:
                            self.log(f"{name}: {have / 1e6:.1f} of {size / 1e6:.1f} MB")
                            mark = have
                except (BotoCoreError, OSError) as err:
                    cuts += 1
                    if cuts > RESUMES:
                        raise ServingError(f"cannot fetch {name} from {self.uri} (run again to continue): "
                                           f"interrupted {cuts} times: {err}") from None
                    self.log(f"{name}: interrupted at {have / 1e6:.1f} MB ({err}); resuming")
                    out.flush()
        complete(partial, directory / name, size)

    def _call(self, operation: str, **params: Any) -> Any:
        try:
            return getattr(self.client(), operation)(**params)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if operation == "head_object" and code in ABSENT:
                raise _Missing(f"no object s3://{self.bucket}/{params['Key']} (or no read access to it: {code})") \
                    from None
            raise ServingError(f"{self.uri}: {operation} {params.get('Key', '')}: {code}: {_advice(code, self)}") \
                from None
        except (BotoCoreError, OSError) as err:  # OSError: e.g. an IRSA token file that is not mounted
            raise ServingError(f"{self.uri}: {err} (credentials come from the environment, AWS_PROFILE, IRSA, "
                               "EKS Pod Identity or instance metadata)") from None


class _Missing(Exception):
    """The object is absent, or hidden from these credentials."""


def _advice(code: str, source: S3) -> str:
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return "check the credentials (and their read access to the objects) and the bucket's region " \
               f"(AWS_REGION, now {source.region or 'unset'})"
    if code in ("NoSuchBucket", "404"):
        return f"check the bucket and prefix of {source.uri}"
    return "S3 refused the request"
