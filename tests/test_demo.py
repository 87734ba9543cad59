"""The embedded default (what ./launch.sh runs), shortened."""

import pytest

from tests.conftest import run_module
from tests.test_quiet_cli import LIBRARY_LINE


@pytest.mark.slow
def test_demo_trains_a_base_then_a_prompt_and_reports_both_accuracies(tmp_path):
  result = run_module(
    't5pt.demo',
    f'--run_dir={tmp_path}',
    '--base_train_steps=30',
    '--prompt_train_steps=20',
    env={'T5PT_VERBOSE': '0'},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert 'base, before prompt tuning' in out and 'base + trained prompt' in out
  assert 'decoded exact match' in out
  assert 'Greedy decodes of the first 6 held-out examples' in out
  assert len([l for l in out.splitlines() if l.endswith((' ok', ' wrong'))]) == 6
  assert f'Run directory: {tmp_path}' in out
  assert (tmp_path / 'base' / 'checkpoint_30').exists()
  assert (tmp_path / 'prompt' / 'checkpoint_20').exists()
  library_lines = [
    line for line in (result.stdout + result.stderr).splitlines() if LIBRARY_LINE.search(line)
  ]
  assert not library_lines, 'the demo shows library logs:\n' + '\n'.join(library_lines[:5])
