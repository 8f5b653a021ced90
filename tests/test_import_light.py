"""`magma` and `magma.actions` stay torch-free: environments import the action vocabulary."""

import subprocess
import sys


def test_actions_import_without_torch():
    code = "import sys, magma, magma.actions; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
