"""Where benchmarks put their figures: one Markdown file per benchmark under docs/results/.

    from results import markdown_table, write_table
    write_table("operator", markdown_table(header, rows))

`write_table(name, text)` writes `docs/results/<name>.md`, or `<name>-quick.md` when the
command line has `--quick` (so a CI run never overwrites a full run's file), with a header
saying which commit ran (`+dirty` when tracked files outside docs/results differed from it),
when, on what machine and by which command. The docs link these files and quote no figure
by hand.
"""

import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """Short hash of HEAD, with `+dirty` when tracked files (other than results) differ from it."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results")
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, memory and GPUs of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    meminfo: dict[str, str] = {}
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    parts = [cpu, f"{os.cpu_count()} cores"]
    if "MemTotal" in meminfo:
        parts.append(f"{int(meminfo['MemTotal'].split()[0]) / 2**20:.1f} GiB RAM")
    parts.append(_gpus() or "no GPU")
    return ", ".join(parts)


def _gpus() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "; ".join(line.strip() for line in out.splitlines() if line.strip())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (each cell on one line, runs of white space as one space, `|` escaped)."""
    cell = lambda value: " ".join(str(value).split()).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


_STARTED = (time.time(), commit())  # the commit that ran is the one checked out when the benchmark started


def write_table(name: str, text: str, command: Sequence[str] | None = None, directory: Path = RESULTS) -> Path:
    """Write `text` (Markdown) to `<directory>/<name>[-quick].md` under a provenance header.

    `command` is the benchmark's argument vector (default `sys.argv`); `--quick` in it selects
    the `-quick` file. Returns the path written.
    """
    argv = list(sys.argv if command is None else command)
    script = Path(argv[0]).resolve() if argv else REPO
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else argv[0]
    started, ran = _STARTED
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Written by `{shlex.join(['python', shown, *argv[1:]])}` at commit `{ran}`, started {stamp}, "
              f"{time.time() - started:.0f} s, on {machine()}; load average {os.getloadavg()[0]:.2f} at the end.")
    directory.mkdir(parents=True, exist_ok=True)
    quick = "--quick" in argv[1:]
    path = directory / f"{name}{'-quick' if quick else ''}.md"
    path.write_text(f"<!-- written by bench/results.py: rerun the command to update, do not edit -->\n"
                    f"# Results: {name}{' (quick mode)' if quick else ''}\n\n{header}\n\n{text.strip()}\n")
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", file=sys.stderr)
    return path
