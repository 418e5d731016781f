"""What every benchmark prints and appends to bench/RESULTS.md: provenance, then the text."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def provenance() -> str:
    """``Commit <sha>[ + uncommitted changes], <machine>``: where a figure came from."""
    from vsearch.evaluate import git_commit, machine_description

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return f"Commit {git_commit()}{' + uncommitted changes' if dirty else ''}, {machine_description()}"


def publish(lines: list[str], append: bool = True) -> None:
    """Prints the report and, unless ``append`` is false, appends it to bench/RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if append:
        with open(RESULTS, "a") as handle:
            handle.write("\n" + text)
        print(f"appended to {RESULTS}", file=sys.stderr)
