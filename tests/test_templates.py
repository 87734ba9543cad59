"""Flan-style template variants: each renders as documented, deterministically, and
few-shot inputs fit the encoder budget that the soft prompt shares."""

import re

import pytest
import seqio
import tensorflow as tf

from t5pt.runtime import data
from t5pt.runtime.errors import UserError
from tasks import show, templates
from tasks.templates import Template

BYTES = seqio.ByteVocabulary()
DROPPED = ('thing number 13', 'thing number 1005')
COLORS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange']
NUM_EXAMPLES = {'train': 60, 'validation': 12}
TEMPLATES = [
  Template('What color is the {thing}?{options_}'),
  Template('Name the color of the {thing}.{options_}'),
  Template('{thing}: which color?{options_}'),
]


def _records(split):
  count = NUM_EXAMPLES[split]
  offset = 0 if split == 'train' else 1000
  return {
    'thing': [f'thing number {i + offset}' for i in range(count)],
    'label': [i % len(COLORS) for i in range(count)],
  }


def _fields(ex):
  if ex['thing'] in DROPPED:  # fields() returning None drops the example.
    return None
  color = COLORS[ex['label']]
  return {
    'thing': ex['thing'],
    'answer': color,
    'options': COLORS,
    'why': f'the {ex["thing"]} was painted {color}',
  }


def _spec(name='colors', **overrides):
  source = seqio.FunctionDataSource(
    lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(_records(split)),
    splits=tuple(NUM_EXAMPLES),
    num_input_examples=NUM_EXAMPLES,
  )
  settings = dict(
    name=name,
    source=source,
    fields=_fields,
    templates=TEMPLATES,
    rationale_field='why',
    inverted_templates=[Template('Name something {answer}.', '{thing}')],
  )
  return templates.TaskSpec(**{**settings, **overrides})


def _texts(task_name, split='validation', sequence_length=None):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
    sequence_length, split=split, shuffle=False, trim_output_features=False
  )
  return [
    (ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode(), list(ex['inputs']))
    for ex in ds.as_numpy_iterator()
  ]


@pytest.fixture(scope='module')
def registered():
  return templates.register(_spec(), BYTES, seed=0, num_shots=3)


ALL_THINGS = [f'thing number {n}' for n in [*range(60), *range(1000, 1012)]]


def _zero_shot_inputs(thing):
  """Every zero-shot rendering (any template, with or without options) of `thing`."""
  options = templates.options_text(COLORS)
  return {t.inputs.format(thing=thing, options_=o) for t in TEMPLATES for o in (options, '')}


def _parse(inputs):
  """(template index, thing) of a zero-shot rendering."""
  options = templates.options_text(COLORS)
  return next(
    (i, thing)
    for thing in ALL_THINGS
    for i, t in enumerate(TEMPLATES)
    for o in (options, '')
    if inputs == t.inputs.format(thing=thing, options_=o)
  )


def test_every_applicable_variant_and_the_mix_are_registered(registered):
  assert registered == [
    f'colors_{v}' for v in ('zsopt', 'zsnoopt', 'fsopt', 'fsnoopt', 'zscot', 'fscot', 'inverted')
  ]
  mix = seqio.get_mixture_or_task('colors_mix')
  assert sorted(t.name for t in mix.tasks) == sorted(registered)
  no_extras = _spec(
    'plain', rationale_field=None, inverted_templates=(), templates=[Template('{thing}?')]
  )
  assert templates.variants_of(no_extras) == ['zsnoopt', 'fsnoopt']


def test_zero_shot_with_and_without_options(registered):
  del registered
  with_options = _texts('colors_zsopt')
  without = _texts('colors_zsnoopt')
  assert len(with_options) == NUM_EXAMPLES['validation'] - 1
  listed = '\n\nOPTIONS:\n- red\n- green\n- blue\n- yellow\n- purple\n- orange'
  things = [t for t in ALL_THINGS[60:] if t not in DROPPED]
  for thing, (inputs, targets, _), (bare, bare_targets, _) in zip(things, with_options, without):
    assert inputs.endswith(listed) and 'OPTIONS' not in bare
    assert _parse(inputs)[1] == _parse(bare)[1] == thing
    assert targets == bare_targets == COLORS[int(thing[-4:]) % 1000 % len(COLORS)]


def test_template_choice_is_deterministic_per_example_and_seed(registered):
  del registered
  first = _texts('colors_zsopt', split='train')
  assert first == _texts('colors_zsopt', split='train')
  assert {_parse(inputs)[0] for inputs, _, _ in first} == {0, 1, 2}
  templates.register(_spec('colors_seed1'), BYTES, seed=1, variants=['zsopt'])
  reseeded = _texts('colors_seed1_zsopt', split='train')
  assert reseeded != first
  assert [t for _, t, _ in reseeded] == [t for _, t, _ in first]


def test_few_shot_format_prefixes_and_exemplars(registered):
  del registered
  for inputs, targets, _ in _texts('colors_fsopt'):
    blocks = inputs.split(templates.FEW_SHOT_SEPARATOR)
    assert len(blocks) == 4  # 3 exemplars + the query; no budget given.
    prefix, answer_prefix = next(
      (p, a)
      for p, a in reversed(templates.FEW_SHOT_PREFIXES)
      if blocks[-1].startswith(p) and blocks[-1].endswith('\n\n' + a)
    )
    query = blocks[-1][len(prefix) : len(blocks[-1]) - len('\n\n' + answer_prefix)]
    query_thing = _parse(query)[1]
    assert targets in COLORS
    for block in blocks[:-1]:
      assert block.startswith(prefix)
      shot_inputs, shot_answer = block[len(prefix) :].rsplit('\n\n' + answer_prefix, 1)
      template, shot_thing = _parse(shot_inputs)
      assert template == _parse(query)[0], 'exemplars share the query template'

      assert shot_thing != query_thing
      assert shot_answer == COLORS[int(shot_thing.split()[-1]) % len(COLORS)]
      assert 'OPTIONS' in shot_inputs


def test_few_shot_drops_exemplars_to_fit_the_budget_that_includes_the_prompt(registered):
  del registered
  full = _texts('colors_fsnoopt')
  prompt_length = 20
  seen = set()
  for inputs_length in (60, 120, 200):
    budget = data.converter_lengths({'inputs': inputs_length, 'targets': 8}, prompt_length)
    fitted = _texts('colors_fsnoopt', sequence_length=budget)
    for (inputs, _, tokens), (untrimmed, _, _) in zip(fitted, full):
      kept = inputs.count(templates.FEW_SHOT_SEPARATOR)
      seen.add(kept)
      assert len(tokens) <= budget['inputs']
      if len(inputs.encode()) + 1 > budget['inputs']:
        assert kept == 0, 'only a query too long on its own may be truncated'
        continue
      assert len(tokens) == len(inputs.encode()) + 1
      # Exemplars are dropped first-first: what is kept is the tail of the full text.
      assert untrimmed.endswith(inputs)
      if kept < 3:
        longer = untrimmed.split(templates.FEW_SHOT_SEPARATOR)[-(kept + 2) :]
        assert len(templates.FEW_SHOT_SEPARATOR.join(longer).encode()) + 1 > budget['inputs']
  assert seen == {0, 1, 2, 3}, 'the budgets should exercise every number of exemplars'
  ds = data.get_dataset(
    'colors_fsnoopt',
    {'inputs': 120, 'targets': 8},
    'validation',
    prompt_length=prompt_length,
    shuffle=False,
    repeat=False,
  )
  for ex in ds.as_numpy_iterator():
    assert ex['encoder_input_tokens'].shape == (100,)


def test_chain_of_thought_targets_and_answer_extraction(registered):
  del registered
  task = seqio.get_mixture_or_task('colors_zscot')
  for inputs, targets, _ in _texts('colors_zscot'):
    assert any(
      inputs.endswith(t.inputs.split('{inputs}')[1])
      or inputs.startswith(t.inputs.split('{inputs}')[0])
      for t in templates.COT_TEMPLATES
    )
    assert 'OPTIONS' in inputs  # The task has options, so CoT lists them.
    assert targets.startswith('the thing number 10') and ' was painted ' in targets
    answer = targets.rsplit(' ', 1)[1].rstrip('.')
    assert targets.endswith(f' So the answer is {answer}.')
    assert task.postprocess_fn(targets) == answer
  assert templates.cot_answer('no cue here') == 'no cue here'
  for inputs, _, _ in _texts('colors_fscot'):
    assert inputs.count(' So the answer is ') == 3


def test_input_inversion_predicts_the_input(registered):
  del registered
  for inputs, targets, _ in _texts('colors_inverted'):
    assert targets.startswith('thing number 10')
    assert inputs in {f'Name something {c}.' for c in COLORS}
  assert seqio.get_mixture_or_task('colors_inverted').metric_fns == []


def test_a_template_naming_a_missing_field_is_a_clear_error():
  templates.register(
    _spec('broken', templates=[Template('{colour}?')]), BYTES, variants=['zsnoopt']
  )
  with pytest.raises(
    Exception,
    match=r"Task 'broken': template '\{colour\}\?' names slot "
    r"'colour'",
  ):
    _texts('broken_zsnoopt')
  with pytest.raises(UserError, match='do not apply'):
    templates.register(_spec('x', rationale_field=None), BYTES, variants=['zscot'])


def test_show_prints_few_shot_examples_pruned_to_the_budget(registered):
  del registered
  lines = list(
    show.example_lines(
      seqio.get_mixture_or_task('colors_fsnoopt'),
      'validation',
      4,
      {'inputs': 200, 'targets': 8},
      prompt_length=20,
    )
  )
  counts = [
    int(re.match(r'inputs \((\d+) tokens\)', line).group(1))
    for line in lines
    if line.startswith('inputs (')
  ]
  assert len(counts) == 4 and max(counts) <= 180 and min(counts) > 100
  assert not any('truncated' in line for line in lines)


def test_few_shot_budget_holds_with_a_sentencepiece_vocabulary(tmp_path):
  """Subword counts are not additive over the joined text, so fitting is checked on the
  full few-shot string; here with a SentencePiece model trained on generated text."""
  import sentencepiece  # pylint: disable=import-outside-toplevel

  lines = [
    f'What color is the thing number {i}? Name the color: {c}'
    for i in range(300)
    for c in COLORS[i % 3 : i % 3 + 2]
  ]
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_prefix=str(tmp_path / 'spm'),
    vocab_size=64,
    user_defined_symbols=['\n'],
    minloglevel=2,
  )
  vocabulary = seqio.SentencePieceVocabulary(str(tmp_path / 'spm.model'))
  templates.register(_spec('colors_spm'), vocabulary, variants=['fsopt'])
  budget = {'inputs': 250, 'targets': 8}  # A query is ~90 pieces, so 1 or 2 exemplars fit.
  ds = seqio.get_mixture_or_task('colors_spm_fsopt').get_dataset(
    budget, split='validation', shuffle=False
  )
  kept = []
  for ex in ds.as_numpy_iterator():
    text = ex['inputs_pretokenized'].decode()
    kept.append(text.count(templates.FEW_SHOT_SEPARATOR))
    assert len(vocabulary.encode(text)) + 1 <= budget['inputs']
  assert 1 <= min(kept) and max(kept) < 3, kept
