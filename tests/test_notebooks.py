"""The notebooks in colab/ as committed: one per method family, outputs
stripped, a `parameters` cell with SMALL = True (what CI runs: `make
notebooks`, i.e. colab/execute.py), and an install cell that pip-installs
from the one NEUROJAX_PIP variable."""

import glob
import os
import re

import nbformat
import pytest

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
FAMILIES = ("quickstart", "pruning", "generations", "kakuritsu", "dit", "rejuvenation", "bayes")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))


def test_one_notebook_per_method_family():
  assert sorted(os.path.basename(p)[:-6] for p in NOTEBOOKS) == sorted(FAMILIES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped_and_parameterised(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "outputs not stripped"
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and params[0] is code[0], "the first code cell is the parameters cell"
  assert re.search(r"^SMALL = True\b", params[0].source, re.M)
  assert re.search(r'^NEUROJAX_PIP = "neurojax(\[\w+\])? @ git\+https://', params[0].source, re.M)
  install = code[1].source
  assert "find_spec(\"neurojax\")" in install and "NEUROJAX_PIP" in install
  assert nb.metadata["kernelspec"]["name"] == "python3"


def test_execute_replaces_a_parameter_or_names_it(tmp_path):
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, COLAB)
  import execute  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(os.path.join(COLAB, "quickstart.ipynb"), as_version=4)
  execute.set_params(nb, {"SMALL": "False"})
  assert re.search(r"^SMALL = False$", execute.parameters_cell(nb).source, re.M)
  with pytest.raises(SystemExit, match="--param NOPE: no 'NOPE = ...' line"):
    execute.set_params(nb, {"NOPE": "1"})
