r"""Flan-style instruction templates: describe a task once, register all its variants.

    spec = templates.TaskSpec(
        name='my_sentiment',
        source=seqio.TfdsDataSource('glue/sst2:2.0.0', splits=('train', 'validation')),
        fields=lambda ex: {'sentence': ex['sentence'],
                           'answer': ['negative', 'positive'][ex['label']],
                           'options': ['negative', 'positive']},
        templates=[templates.Template('{sentence}\n\nIs this review positive or '
                                      'negative?{options_}')],
        metric_fns=[metrics.accuracy])
    templates.register(spec, vocabulary)   # my_sentiment_zsopt, _zsnoopt, _fsopt, ...

`fields` turns one raw example (strings, ints and lists, already decoded from tensors) into
the values the templates' `{slots}` name; returning None drops the example. Templates are
`str.format` strings (double a literal brace: `{{`). The slot `{options_}` renders as
"\n\nOPTIONS:\n- a\n- b" from `fields(...)['options']` in the *opt* variants and as nothing
in the *noopt* ones.

Variants, registered as `<name>_<variant>` where they apply:
  zsopt     zero-shot, answer options listed (templates using {options_})
  zsnoopt   zero-shot, no options
  fsopt     few-shot: `num_shots` exemplars from the train split, then the query, as
  fsnoopt     {prefix}{inputs}\n\n{answer_prefix}{targets}\n\n\n ... {prefix}{inputs}\n\n{answer_prefix}
            with one (prefix, answer_prefix) pair from FEW_SHOT_PREFIXES per example.
            Exemplars are dropped, first one first, until the query fits the encoder's token
            budget -- seqio's `sequence_length['inputs']`, which t5pt sets to
            TASK_FEATURE_LENGTHS['inputs'] minus PROMPT_LENGTH, less one for EOS.
  zscot     chain of thought (only with `rationale_field`): the zero-shot inputs plus a
  fscot       step-by-step cue; the target is the rationale, then the answer
            ("... So the answer is yes."). A postprocessor takes the answer back out, so the
            task's metrics still apply.
  inverted  input inversion (only with `inverted_templates`): e.g. write the question for
            a passage and answer. These have no metrics.
plus the mixture `<name>_mix` with every registered variant at equal rate.

Choices are deterministic: the template, the few-shot prefixes and the exemplars depend
only on the example's fields, the variant and `seed`, never on order or host, so a rerun
or a resumed run sees the same text.

Rendering is Python (run through `tf.numpy_function`): it is microseconds per example, far
below what a training step consumes, and keeps templates plain strings anyone can read.
"""

import dataclasses
import json
import re
import threading
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5pt.runtime.errors import UserError
from tasks import mixtures


@dataclasses.dataclass(frozen=True)
class Template:
  """Instruction `inputs` and answer `targets`, each with `{field}` slots."""

  inputs: str
  targets: str = '{answer}'


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task described once: where the data is, its fields, templates and metrics.

  `answers_field`: a field holding every acceptable answer (e.g. SQuAD's list); it is
  kept with the example (as JSON in the string feature 'answers') and, through
  `answers_postprocessor`, becomes the evaluation target.
  """

  name: str
  source: seqio.DataSource
  fields: Callable[[dict], Optional[dict]]
  templates: Sequence[Template]
  inverted_templates: Sequence[Template] = ()
  rationale_field: Optional[str] = None
  metric_fns: Sequence[Callable] = ()
  answers_field: Optional[str] = None
  exemplar_split: str = 'train'

  @property
  def has_options(self) -> bool:
    return any('{options_}' in t.inputs for t in self.templates)


FEW_SHOT_PREFIXES = (
  ('', ''),
  ('Q: ', 'A: '),
  ('Question: ', 'Answer: '),
  ('Input: ', 'Output: '),
  ('Problem: ', 'Solution: '),
  ('Request: ', 'Response: '),
  ('Text: ', 'Reply: '),
)
FEW_SHOT_SEPARATOR = '\n\n\n'
EXEMPLAR_POOL_SIZE = 256

COT_TEMPLATES = (
  Template("{inputs}\nLet's think step by step.", '{rationale} So the answer is {answer}.'),
  Template(
    '{inputs}\nExplain your reasoning, then answer.', '{rationale} So the answer is {answer}.'
  ),
  Template('Think it through first. {inputs}', '{rationale} So the answer is {answer}.'),
)
_COT_ANSWER = re.compile(r'So the answer is (.*?)\.?\s*$', re.DOTALL)

OUTPUT_KEYS = ('inputs', 'targets', 'answers')


def options_text(options: Sequence[str]) -> str:
  return '\n\nOPTIONS:\n' + '\n'.join(f'- {o}' for o in options)


def _fill(text: str, values: Mapping[str, Any], task: str) -> str:
  try:
    return text.format_map(values)
  except KeyError as e:
    raise UserError(
      f'Task {task!r}: template {text!r} names slot {e} but the fields are '
      f'{sorted(values)} (fix the template or the fields function; write a '
      'literal brace as {{ or }}).'
    ) from None


def example_key(fields: Mapping[str, Any]) -> int:
  """A stable 32-bit fingerprint of an example's fields."""
  return zlib.crc32(json.dumps(fields, sort_keys=True, default=str).encode())


def _pick(count: int, *key) -> int:
  return zlib.crc32(repr(key).encode()) % count


def cot_answer(prediction: str, example=None, is_target: bool = False) -> str:
  """The answer after "So the answer is" (the whole text when the cue is missing)."""
  del example, is_target
  found = _COT_ANSWER.search(prediction)
  return found.group(1).strip() if found else prediction.strip()


def answers_postprocessor(output: str, example=None, is_target: bool = False):
  """Targets become the example's list of acceptable answers; predictions stay text."""
  if is_target and example is not None and 'answers' in example:
    answers = example['answers']
    return json.loads(answers.decode() if isinstance(answers, bytes) else answers)
  return output


class Renderer:
  """Turns a spec's fields into (inputs, targets) text for one variant."""

  def __init__(
    self, spec: TaskSpec, variant: str, seed: int, num_shots: int, vocabulary: seqio.Vocabulary
  ):
    self.spec, self.variant, self.seed = spec, variant, seed
    self.num_shots, self.vocabulary = num_shots, vocabulary
    self.with_options = variant in ('zsopt', 'fsopt') or (
      variant.endswith('cot') and spec.has_options
    )
    self._pool: Optional[list[tuple[int, dict]]] = None
    self._pool_lock = threading.Lock()

  def _values(self, fields: Mapping[str, Any]) -> dict:
    values = dict(fields)
    values['options_'] = options_text(fields.get('options', ())) if self.with_options else ''
    return values

  def _template(self, key: int) -> Template:
    templates = self.spec.inverted_templates if self.variant == 'inverted' else self.spec.templates
    return templates[_pick(len(templates), self.seed, self.variant, key)]

  def zero_shot(self, fields: Mapping[str, Any], key: Optional[int] = None) -> tuple[str, str]:
    """Inputs and targets of one example, the template chosen by `key`."""
    key = example_key(fields) if key is None else key
    template, values = self._template(key), self._values(fields)
    inputs = _fill(template.inputs, values, self.spec.name)
    targets = _fill(template.targets, values, self.spec.name)
    if self.variant.endswith('cot'):
      cot = COT_TEMPLATES[_pick(len(COT_TEMPLATES), self.seed, 'cot', key)]
      values = {**values, 'inputs': inputs, 'rationale': fields[self.spec.rationale_field]}
      inputs = _fill(cot.inputs, values, self.spec.name)
      targets = _fill(cot.targets, values, self.spec.name)
    return inputs, targets

  def pool(self) -> list[tuple[int, dict]]:
    """(key, fields) of the first EXEMPLAR_POOL_SIZE usable examples of the exemplar
    split."""
    with self._pool_lock:
      if self._pool is None:
        self._pool = self._read_pool()
    return self._pool

  def _read_pool(self) -> list[tuple[int, dict]]:
    ds = self.spec.source.get_dataset(split=self.spec.exemplar_split, shuffle=False)
    pool = []
    for raw in ds.as_numpy_iterator():
      fields = self.spec.fields(to_python(raw))
      if fields is not None:
        pool.append((example_key(fields), fields))
      if len(pool) == EXEMPLAR_POOL_SIZE:
        break
    if not pool:
      raise UserError(
        f'Task {self.spec.name!r}: few-shot needs exemplars but the '
        f'{self.spec.exemplar_split!r} split yielded none.'
      )
    return pool

  def few_shot(self, fields: Mapping[str, Any], max_tokens: Optional[int]) -> tuple[str, str]:
    """`num_shots` exemplars and the query with the same template; exemplars dropped
    first-first until the inputs have at most `max_tokens` tokens (None: no limit)."""
    key = example_key(fields)
    prefix, answer_prefix = FEW_SHOT_PREFIXES[
      _pick(len(FEW_SHOT_PREFIXES), self.seed, 'prefix', key)
    ]
    candidates = [f for k, f in self.pool() if k != key]
    rng = np.random.default_rng([self.seed, key])
    chosen = rng.choice(len(candidates), size=min(self.num_shots, len(candidates)), replace=False)
    shots = [self.zero_shot(candidates[i], key) for i in chosen]
    query, targets = self.zero_shot(fields, key)
    blocks = [f'{prefix}{i}\n\n{answer_prefix}{t}' for i, t in shots]
    final = f'{prefix}{query}\n\n{answer_prefix}'
    while True:
      inputs = FEW_SHOT_SEPARATOR.join(blocks + [final])
      if max_tokens is None or not blocks or len(self.vocabulary.encode(inputs)) <= max_tokens:
        return inputs, targets
      blocks.pop(0)


def to_python(value):
  """numpy/bytes example values -> str, int, float, list and dict."""
  if isinstance(value, dict):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray):
    return [to_python(v) for v in value.tolist()] if value.ndim else to_python(value.item())
  if isinstance(value, np.generic):
    return value.item()
  return value


def _render_dataset(
  ds: tf.data.Dataset, render: Callable[[dict], Optional[tuple]], spec: TaskSpec
) -> tf.data.Dataset:
  """Maps raw examples to {'inputs', 'targets', 'answers'} strings through Python."""
  structure = ds.element_spec

  def py_render(*flat):
    example = to_python(tf.nest.pack_sequence_as(structure, list(flat)))
    fields = spec.fields(example)
    if fields is None:
      return [np.bytes_(b'')] * len(OUTPUT_KEYS) + [np.bool_(False)]
    inputs, targets = render(fields)
    answers = json.dumps(list(fields[spec.answers_field])) if spec.answers_field else ''
    return [np.bytes_(s.encode()) for s in (inputs, targets, answers)] + [np.bool_(True)]

  def to_strings(example):
    *texts, keep = tf.numpy_function(
      py_render,
      tf.nest.flatten(example),
      [tf.string] * len(OUTPUT_KEYS) + [tf.bool],
      stateful=False,
    )
    out = {k: tf.ensure_shape(t, []) for k, t in zip(OUTPUT_KEYS, texts)}
    out['keep'] = tf.ensure_shape(keep, [])
    return out

  ds = ds.map(to_strings, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.filter(lambda ex: ex['keep']).map(lambda ex: {k: ex[k] for k in OUTPUT_KEYS})


def variants_of(spec: TaskSpec) -> list[str]:
  """The variant names that apply to `spec`."""
  names = ['zsopt', 'zsnoopt', 'fsopt', 'fsnoopt'] if spec.has_options else ['zsnoopt', 'fsnoopt']
  if spec.rationale_field:
    names += ['zscot', 'fscot']
  if spec.inverted_templates:
    names.append('inverted')
  return names


def _preprocessor(renderer: Renderer, spec: TaskSpec) -> Callable:
  if renderer.variant.startswith('fs'):

    def few_shot(dataset, sequence_length=None):
      budget = sequence_length.get('inputs') if sequence_length else None
      renderer.pool()  # Read now, not by the first of several parallel map calls.
      return _render_dataset(
        dataset, lambda f: renderer.few_shot(f, budget - 1 if budget else None), spec
      )

    return few_shot
  return lambda dataset: _render_dataset(dataset, renderer.zero_shot, spec)


def _postprocess_fn(spec: TaskSpec, variant: str) -> Optional[Callable]:
  base = answers_postprocessor if spec.answers_field else None
  if not variant.endswith('cot'):
    return base

  def cot_then_answers(output, example=None, is_target=False):
    output = cot_answer(output)
    return base(output, example, is_target) if base else output

  return cot_then_answers


def register(
  spec: TaskSpec,
  vocabulary: seqio.Vocabulary,
  *,
  seed: int = 0,
  num_shots: int = 3,
  variants: Optional[Sequence[str]] = None,
) -> list[str]:
  """Registers (or re-registers) `<spec.name>_<variant>` tasks and the `<name>_mix`
  mixture; returns the task names."""
  if not spec.templates:
    raise UserError(f'Task {spec.name!r} needs at least one template.')
  applicable = variants_of(spec)
  unknown = set(variants or ()) - set(applicable)
  if unknown:
    raise UserError(
      f'Task {spec.name!r}: variants {sorted(unknown)} do not apply; it has {applicable}.'
    )
  feature = seqio.Feature(vocabulary, add_eos=True)
  names = []
  for variant in variants or applicable:
    name = f'{spec.name}_{variant}'
    renderer = Renderer(spec, variant, seed, num_shots, vocabulary)
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
      name,
      source=spec.source,
      preprocessors=[
        _preprocessor(renderer, spec),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={'inputs': feature, 'targets': feature},
      postprocess_fn=_postprocess_fn(spec, variant),
      metric_fns=[] if variant == 'inverted' else list(spec.metric_fns),
    )
    names.append(name)
  mix = f'{spec.name}_mix'
  mixtures.register_weighted_mixture(mix, {n: 1.0 for n in names})
  return names
