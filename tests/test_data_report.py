"""The data report a run prints before its first step: truncation and packing, checked
against token counts made by hand from the synthetic tasks' strings."""

import numpy as np

from t5pt.runtime import data
from t5pt.training import data_report
from tasks import synthetic

TASK = 'synthetic_max'


def test_truncation_counts_match_the_examples():
  # 'max: cab' + EOS is 9..14 bytes; 8 of the 12 input positions are left after the prompt.
  report = data_report.truncation(TASK, 'validation', {'inputs': 12, 'targets': 4}, 4, sample=200)
  lengths = [len(i.encode()) + 1 for i in synthetic.examples(TASK, 'validation')[0][:200]]
  inputs = report['inputs']
  assert inputs.budget == 8 and list(inputs.lengths) == lengths
  over = [n - 8 for n in lengths if n > 8]
  assert inputs.overflows == over and over
  line = inputs.line(' (12 less the 4-position prompt)')
  assert line == (
    f'data: inputs longer than 8 tokens (12 less the 4-position prompt): {len(over)} of 200 '
    f'sampled examples ({100 * len(over) / 200:.1f}%), truncated by {int(np.median(over))} '
    f'tokens median, {max(over)} max'
  )
  assert report['targets'].line() == (
    'data: targets fit 4 tokens in all 200 sampled examples (longest 2)'
  )


def test_packing_reports_examples_per_row():
  lengths = {'inputs': 64, 'targets': 8}
  packed = data.get_dataset(TASK, lengths, 'validation', pack=True, shuffle=False, repeat=False)
  per_row = data_report.examples_per_row(packed, rows=8)
  # Targets of 2 tokens fill an 8-token row 4 times over; inputs of at most 14 fit 4 too.
  assert per_row == 4.0
  lines = list(data_report.lines(TASK, 'validation', {'inputs': 64, 'targets': 2}, 0, packed=(
    data.get_dataset(TASK, {'inputs': 64, 'targets': 2}, 'validation', pack=True, repeat=False)
  )))  # fmt: skip
  assert lines[-1].startswith('data: packing holds 1.0 examples per row')
  assert 'Choosing lengths and packing' in lines[-1]
