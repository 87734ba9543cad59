"""The tree stays as the formatter and linter configured in pyproject.toml leave it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

RUFF = os.path.join(os.path.dirname(sys.executable), 'ruff')  # requirements-test.txt


@pytest.mark.parametrize('command', [['format', '--check'], ['check']])
def test_ruff(command):
  result = subprocess.run([RUFF, *command, '.'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
