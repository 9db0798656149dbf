"""The forms `spec.model.weightsUri` takes, written once for the CRD's pattern and the spec check.

The worker's `helix weights fetch` parses hf:// and s3:// itself (the worker never imports
the operator); these patterns accept exactly what it accepts.
"""

import re

FORMS = {
    "pvc": (r"pvc://.+", "pvc://CLAIM/PATH (a PersistentVolumeClaim, mounted read-only)"),
    "file": (r"file://.+", "file:///PATH (in the image, or mounted by worker.template)"),
    "hf": (r"hf://[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)?(@[-A-Za-z0-9_./]+)?",
           "hf://ORG/REPO[@REVISION] (a Hugging Face repository id and optional branch, tag or commit)"),
    "s3": (r"s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/[^\s]*)?",
           "s3://BUCKET[/PREFIX] (a bucket name of 3-63 lowercase letters, digits, '-' and '.')"),
}
PATTERN = "^(" + "|".join(pattern for pattern, _ in FORMS.values()) + ")$"
REMOTE = ("hf", "s3")
REVISION_KEY = "revision"  # in a plan's `model` mapping: the commit of hf:// weights every pod of it fetches


def scheme(uri: str) -> str:
    return uri.partition("://")[0] if "://" in uri else ""


def problem(uri: str) -> str | None:
    """Why `uri` is no weights URI, saying what a right one looks like; None if it is one."""
    form = FORMS.get(scheme(uri))
    if form is None:
        return f"{uri!r} has no supported scheme: use " + ", ".join(text for _, text in FORMS.values())
    if not re.fullmatch(form[0], uri):
        return f"{uri!r} is not a valid {scheme(uri)}:// URI: use {form[1]}"
    return None


def hf_parts(uri: str | None) -> tuple[str, str] | None:
    """(repo, revision) of an hf:// URI (revision "main" when absent); None for other URIs."""
    if not uri or not uri.startswith("hf://"):
        return None
    repo, _, revision = uri[len("hf://"):].partition("@")
    return repo, revision or "main"


def pinned(uri: str, revision: str | None) -> str:
    """`uri` at the commit `revision` when it is hf:// and one is given, else `uri` itself."""
    parts = hf_parts(uri)
    return f"hf://{parts[0]}@{revision}" if parts and revision else uri
