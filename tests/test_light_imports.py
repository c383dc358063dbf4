"""The tools that read records start without torch and transformers: the launchers call them once or more per study,
and each of those imports cost ~5 s of CPU per call (issue 29, CI speed)."""

import subprocess
import sys

import pytest
from conftest import ROOT

REPORT_TOOLS = ["compare_runs", "allocation_quality", "launch.choose_rates", "launch.study_compute",
                "launch.oracle_share", "launch.frontier"]


@pytest.mark.parametrize("module", REPORT_TOOLS)
def test_report_tool_imports_neither_torch_nor_transformers(module):
    """Imported in a fresh interpreter (pytest's own has torch loaded), the tool's module leaves torch and transformers
    out of sys.modules."""
    code = (f"import importlib, sys; importlib.import_module({module!r}); "
            "print(' '.join(sorted({'torch', 'transformers'} & set(sys.modules))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"
