"""The docs stay true to the code: README size, every path, module and link they name, the
generated settings and CRD tables, and the benchmark result files.

    .venv/bin/python tests/e2e/test_docs.py    # regenerate the tables in docs/configuration.md
"""

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from helix_operator.api import crd
from helix_planner.cli import build_parser
from helix_worker import envs

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
PACKAGES = {"helix_planner": "planner", "helix_worker": "worker", "helix_operator": "operator", "helix_dev": "dev",
            "helix_proto": "proto"}
# CRD objects whose inside is Kubernetes' own (selectors, tolerations, resources, pod templates).
OPAQUE = {"selector", "tolerations", "resources", "template", "env", "annotations", "limits", "requests"}


def pages() -> list[Path]:
    """README.md and the hand-written pages of docs/ (not the generated results)."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _repo_files() -> list[str]:
    """Tracked files and new ones not ignored."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [f for f in listed if (REPO / f).exists()]


def _module_file(module: str) -> Path | None:
    """The source of `helix_x.a.b` in this tree, or None."""
    top, *rest = module.split(".")
    base = REPO / PACKAGES[top] / top
    for path in (base.joinpath(*rest).with_suffix(".py") if rest else base / "__init__.py",
                 base.joinpath(*rest, "__init__.py")):
        if path.exists():
            return path
    return None


def _defines(module: str, name: str) -> bool:
    """Whether `module` exists and defines `name` at top level."""
    path = _module_file(module)
    return path is not None and re.search(rf"^(?:class|def|async def) {name}\b|^{name}\b.*=",
                                          path.read_text(), flags=re.MULTILINE) is not None


def _code_spans(text: str) -> Iterator[str]:
    """Inline code and the lines of fenced code blocks."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        yield from block.splitlines()
    yield from re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))


def _missing_paths(text: str, files: list[str]) -> list[str]:
    top = {f.split("/", 1)[0] for f in files}
    missing = []
    pattern = r"[\w.~-]*(?:/[\w.*<>\[\]-]+)+/?|[\w-]+\.(?:py|proto|cpp|yaml|json|dot|svg|md)\b"
    for span in _code_spans(text):
        for token in re.findall(pattern, span):
            token = token.rstrip("/.")
            if any(c in token for c in "<>*[]") or token.startswith(("~", "..", "/")) or "://" in span:
                continue
            head = token.split("/", 1)[0]
            if "/" in token and head in top:
                exists = (REPO / token).exists()
            elif token.endswith((".py", ".proto", ".cpp")):  # a module named by its file, maybe inside a package
                exists = any(f == token or f.endswith("/" + token) for f in files)
            else:
                continue
            if not exists:
                missing.append(token)
    return missing


def _missing_modules(text: str) -> list[str]:
    missing = []
    for span in _code_spans(text):
        for module in re.findall(r"(?<!-m )\b(helix_(?:planner|worker|operator|dev|proto)(?:\.\w+)*)", span):
            parent, _, name = module.rpartition(".")
            if _module_file(module) is None and not (parent and _defines(parent, name)):
                missing.append(module)
        for module in re.findall(r"python -m ([\w.]+)", span):
            if module.split(".")[0] in PACKAGES and _module_file(module) is None:
                missing.append(f"python -m {module}")
    return missing


def _missing_links(page: Path) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [link for link in links if "://" not in link and not link.startswith("#")
            and not (page.parent / link.split("#", 1)[0]).exists()]


def test_readme_is_short() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < 10_000, f"README.md is {size} bytes: move detail into docs/"


def test_every_path_module_and_link_in_the_docs_exists() -> None:
    files = _repo_files()
    problems = {page.relative_to(REPO).as_posix(): _missing_paths(page.read_text(), files)
                + _missing_modules(page.read_text()) + _missing_links(page) for page in pages()}
    assert {page: found for page, found in problems.items() if found} == {}


def test_the_checker_sees_rot() -> None:
    files = _repo_files()
    assert _missing_paths("see `worker/helix_worker/gone.py` and `weights_gone.py`", files) == [
        "worker/helix_worker/gone.py", "weights_gone.py"]
    assert _missing_paths("`engine/kv_pool.py`, `bench/results.py`, `hf://org/repo`, `/v1/models`", files) == []
    assert _missing_modules("`helix_worker.gone` and `python -m helix_planner.nothing`") == [
        "helix_worker.gone", "python -m helix_planner.nothing"]
    assert _missing_modules("`helix_worker.envs.Settings`, `python -m helix_worker.transport.codegen`") == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(action.choices) if action else {}


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Whether `helix argv` parses (`--help` counts)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code == 0
    return True


def _names_commands(parser: argparse.ArgumentParser, words: list[str]) -> bool:
    """Whether the leading words of an inline `helix ...` name existing (sub)commands."""
    for word in words:
        choices = _subcommands(parser)
        if not choices or word.startswith("-"):
            return True
        if word not in choices:
            return False
        parser = choices[word]
    return True


def _bad_commands(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """`helix` command lines of bash blocks that do not parse, and inline `helix x` naming no command."""
    bad = []
    for block in re.findall(r"^\s*```bash\n(.*?)^\s*```", text, flags=re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            found = re.match(r"^\s*(?:\.venv/bin/)?helix (.*)$", line.split(" #")[0])
            if found and not _parses(parser, shlex.split(found.group(1))):
                bad.append(line.strip())
    bad += [span for span in re.findall(r"`(?:\.venv/bin/)?helix ([^`]+)`", text)
            if not _names_commands(parser, span.split())]
    return bad


def test_every_helix_command_in_the_docs_exists() -> None:
    parser = build_parser()
    assert _bad_commands("```bash\nhelix plan --no-such-flag\n```\n`helix nosuch` `helix catalog list`", parser) == [
        "helix plan --no-such-flag", "nosuch"]
    problems = {page.name: _bad_commands(page.read_text(), parser) for page in pages()}
    assert {page: bad for page, bad in problems.items() if bad} == {}


# Generated tables ------------------------------------------------------------------------------

def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_table() -> str:
    """Every HELIX_* setting of the registry, then the remote-storage variables `helix weights fetch` reads."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    for spec in fields(envs.Settings):
        default = spec.default if spec.default is not MISSING else ""
        rows.append(f"| `{envs.env_name(spec.name)}` | `{default!r}` | {_cell(spec.metadata['help'])} |")
    rows += ["", "| variable (weights download only) | what |", "|---|---|"]
    rows += [f"| `{name}` | {_cell(help)} |" for name, help in envs.REMOTE_STORAGE.items()]
    return "\n".join(rows)


def _schema_rows(node: dict[str, Any], path: str) -> Iterator[str]:
    required = set(node.get("required") or ())
    for name, child in (node.get("properties") or {}).items():
        here = f"{path}.{name}"
        kind = " or ".join(option.get("type", "") for option in child["anyOf"]) if "anyOf" in child \
            else child.get("type", "")
        if kind == "array" and isinstance(child.get("items"), dict):
            kind = f"array of {child['items'].get('type', 'object')}"
        extra = ["Required."] if name in required else []
        if "enum" in child:
            extra.append(f"One of {', '.join(map(str, child['enum']))}.")
        if "minimum" in child and "maximum" in child:
            extra.append(f"{child['minimum']} to {child['maximum']}.")
        elif "minimum" in child:
            extra.append(f"At least {child['minimum']}.")
        if child.get("default") not in (None, {}, []):
            extra.append(f"Default `{child['default']}`.")
        yield f"| `{here}` | {kind} | {_cell(' '.join([child.get('description', ''), *extra]).strip())} |"
        if name in OPAQUE:
            continue
        yield from _schema_rows(child, here)
        if isinstance(child.get("items"), dict):
            yield from _schema_rows(child["items"], here + "[]")


def crd_table(kind: str) -> str:
    """The spec fields of one of the operator's CRDs, from the schema it installs."""
    make = {"HelixCluster": crd.helixcluster_crd, "GPUProfile": crd.gpuprofile_crd}[kind]
    schema = make()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return "\n".join(["| field | type | what |", "|---|---|---|", *_schema_rows(schema, "spec")])


def generated() -> dict[str, str]:
    return {"settings": settings_table(), "helixcluster": crd_table("HelixCluster"),
            "gpuprofile": crd_table("GPUProfile")}


def _fill(text: str, tables: dict[str, str]) -> str:
    """`text` with the block between each table's markers replaced by the table."""
    for name, table in tables.items():
        start, end = f"<!-- generated:{name} -->\n", f"<!-- end:{name} -->"
        head, found, rest = text.partition(start)
        if found and end in rest:
            text = head + start + table + "\n" + end + rest.split(end, 1)[1]
    return text


def test_configuration_tables_match_the_code() -> None:
    text = CONFIGURATION.read_text()
    for name in generated():
        assert f"<!-- generated:{name} -->" in text and f"<!-- end:{name} -->" in text, name
    assert _fill(text, generated()) == text, "docs/configuration.md drifted: run `python tests/e2e/test_docs.py`"


# Benchmark results -----------------------------------------------------------------------------

def _load_results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_results", REPO / "bench" / "results.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_file_is_written_by_a_benchmark_and_linked() -> None:
    index = (DOCS / "results.md").read_text()
    files = sorted((DOCS / "results").glob("*.md"))
    assert files
    for path in files:
        text = path.read_text()
        assert text.startswith("<!-- written by bench/results.py"), path
        assert re.search(r"^Written by `python bench/\w+\.py.*` at commit `\w+(\+dirty)?`, started \d{4}-\d\d-\d\d ",
                         text, flags=re.MULTILINE), path
        assert f"(results/{path.name})" in index, f"docs/results.md does not link {path.name}"


MEASURED = re.compile(r"\b\d[\d,.]*\s*(?:tok/s|tokens/s|MB/s|ms/hop|ms per hop)")  # link speeds are inputs


def test_no_page_quotes_a_measured_figure_by_hand() -> None:
    """Throughput and latency figures live in docs/results/ (written by the benchmarks), not in the pages."""
    quoted = {}
    for page in pages():
        text = re.sub(r"<!-- generated:(\w+) -->.*?<!-- end:\1 -->", "", page.read_text(), flags=re.DOTALL)
        if found := MEASURED.findall(text):
            quoted[page.name] = found
    assert quoted == {}
    assert MEASURED.findall("moved 1320 MB/s, 2,045.6 tok/s, +1.5 ms per hop") == [
        "1320 MB/s", "2,045.6 tok/s", "1.5 ms per hop"]


def test_write_table_stamps_provenance_and_keeps_quick_runs_apart(tmp_path: Path) -> None:
    results = _load_results()
    table = results.markdown_table(("a", "b"), [(1, "x|y")])
    assert table == "| a | b |\n|---|---|\n| 1 | x\\|y |"
    full = results.write_table("demo", table, ["bench/demo.py"], directory=tmp_path)
    quick = results.write_table("demo", table, ["bench/demo.py", "--quick"], directory=tmp_path)
    assert (full.name, quick.name) == ("demo.md", "demo-quick.md")
    text = quick.read_text()
    assert "`python bench/demo.py --quick` at commit `" in text and " cores, " in text and "GiB RAM" in text
    assert text.rstrip().endswith(table)


if __name__ == "__main__":
    CONFIGURATION.write_text(_fill(CONFIGURATION.read_text(), generated()))
    print(f"wrote {CONFIGURATION.relative_to(REPO)}")
