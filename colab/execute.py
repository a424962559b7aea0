"""Runs notebooks top to bottom with nbclient, as CI does (`make notebooks`).

    python colab/execute.py [colab/*.ipynb] [--timeout 900] [--param NAME=VALUE ...]

Each notebook runs in a fresh kernel (this interpreter's), in a temporary
working directory, with its parameters cell as committed (SMALL = True: a
minute or two each) unless --param replaces an assignment there. It exits
non-zero at the first cell that raises, printing the cell and its error; the
notebooks in git are never modified (outputs stay stripped).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time

import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def parameters_cell(nb):
  for cell in nb.cells:
    if "parameters" in cell.get("metadata", {}).get("tags", []):
      return cell
  return None


def set_params(nb, params: dict[str, str]) -> None:
  cell = parameters_cell(nb)
  for name, value in params.items():
    pattern = re.compile(rf"^{re.escape(name)}\s*=.*$", re.M)
    if cell is None or not pattern.search(cell.source):
      raise SystemExit(f"--param {name}: no '{name} = ...' line in the parameters cell")
    cell.source = pattern.sub(f"{name} = {value}", cell.source)


def execute(path: str, timeout: int, params: dict[str, str]) -> float:
  nb = nbformat.read(path, as_version=4)
  set_params(nb, params)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="nb-") as cwd:
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": cwd}})
    client.execute()
  return time.perf_counter() - start


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("notebooks", nargs="*", default=sorted(glob.glob(os.path.join(HERE, "*.ipynb"))))
  p.add_argument("--timeout", type=int, default=900, help="seconds per cell")
  p.add_argument("--param", action="append", default=[], help="NAME=VALUE in the parameters cell")
  args = p.parse_args(argv)
  params = dict(kv.split("=", 1) for kv in args.param)
  total = 0.0
  for path in args.notebooks:
    print(f"{os.path.basename(path)}: running ...", flush=True)
    try:
      seconds = execute(path, args.timeout, params)
    except nbclient.exceptions.CellExecutionError as e:
      print(f"{path}: a cell failed:\n{e}", file=sys.stderr)
      raise SystemExit(1) from None
    total += seconds
    print(f"{os.path.basename(path)}: ok in {seconds:.0f} s", flush=True)
  print(f"{len(args.notebooks)} notebooks ran without error in {total:.0f} s")


if __name__ == "__main__":
  main()
