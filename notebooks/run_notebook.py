"""Executes the walkthrough notebook with nbclient.

    python notebooks/run_notebook.py --inplace        # real run artifacts -> committed outputs
    SMOKE=1 python notebooks/run_notebook.py --out /tmp/nb.ipynb   # synthetic, ~1 min
    SMOKE=1 SMOKE_DIR=RUN python notebooks/run_notebook.py --out /tmp/nb.ipynb  # a finished smoke run
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
# TensorFlow's C++ start-up lines (absl logs before initialisation) say nothing to a reader.
_NOISE = re.compile(r"^(I0000|W0000|E0000|WARNING: All log messages before absl)")


def drop_log_noise(nb) -> None:
    """Removes TensorFlow's start-up log lines from stderr outputs, and streams left empty."""
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["text"] = "".join(line for line in out["text"].splitlines(keepends=True)
                                      if not _NOISE.match(line))
                if not out["text"].strip():
                    continue
            kept.append(out)
        if cell.get("cell_type") == "code":
            cell["outputs"] = kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", default=str(HERE / "visual_search.ipynb"))
    parser.add_argument("--out", help="where to write the executed notebook")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebook with its outputs")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE.parent)}}).execute()
    drop_log_noise(nb)
    out = args.notebook if args.inplace else args.out
    if out:
        nbformat.write(nb, out)
    images = sum(len(o.get("data", {}).get("image/png", "")) for cell in nb.cells for o in cell.get("outputs", []))
    print(f"executed {args.notebook}: {len(nb.cells)} cells, {images / 1024:.0f} KiB of PNG outputs"
          + (f", wrote {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
