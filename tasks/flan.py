"""Well-known TFDS datasets as Flan-style template tasks, and a capped mixture of them.

Importing this module registers, for every dataset below, the variants of
`tasks.templates` (e.g. `sst2_zsopt`, `sst2_fsnoopt`, `squad_inverted`, `esnli_zscot`),
a `<name>_mix` per dataset and `flan_mini_mixture` over all the zero-/few-shot variants
with examples-proportional rates capped at 3,000 examples per dataset:

    python -m t5pt.train --gin_file=gin/flan_t5_base_prompt.gin \\
      --gin.MIXTURE_OR_TASK_MODULE="'tasks.flan'" --gin.MIXTURE_OR_TASK_NAME="'rte_mix'" ...

Data comes from TFDS: run `tfds build glue/rte` (or let TFDS download on first use)
where the machine has network, and point TFDS_DATA_DIR at it.

The vocabulary is T5's SentencePiece model (Flan-T5's too), read from the environment
variable T5PT_VOCABULARY (a `.model` file or an HF checkpoint folder holding
`spiece.model`) or else from T5's public bucket, lazily, at first use. Call
`register_all(vocabulary)` to use another one.

The templates are written for t5pt in the spirit of Flan's: several phrasings per task,
answer options where the answer is one of a few strings.
"""

import os
from typing import Optional, Sequence

import seqio

from t5pt.runtime import vocabularies
from tasks import metrics, mixtures, templates
from tasks.templates import Template

T5_VOCABULARY_URL = 'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model'
MIXTURE = 'flan_mini_mixture'
MIXED_VARIANTS = ('zsopt', 'zsnoopt', 'fsopt', 'fsnoopt')
YES_NO = ['yes', 'no']
NLI_OPTIONS = ['yes', 'it is not possible to tell', 'no']


def default_vocabulary() -> seqio.Vocabulary:
  path = os.environ.get('T5PT_VOCABULARY')
  if path:
    return vocabularies.sentencepiece(path)
  return seqio.SentencePieceVocabulary(T5_VOCABULARY_URL, extra_ids=vocabularies.T5_EXTRA_IDS)


def _tfds(name: str, splits: Sequence[str] = ('train', 'validation')) -> seqio.DataSource:
  return seqio.TfdsDataSource(tfds_name=name, splits=splits)


def _sst2(ex):
  label = ['negative', 'positive'][ex['label']]
  return {'sentence': ex['sentence'], 'answer': label, 'options': ['negative', 'positive']}


def _mrpc(ex):
  return {
    'sentence1': ex['sentence1'],
    'sentence2': ex['sentence2'],
    'answer': ['no', 'yes'][ex['label']],
    'options': ['no', 'yes'],
  }


def _rte(ex):
  return {
    'premise': ex['sentence1'],
    'hypothesis': ex['sentence2'],
    'answer': YES_NO[ex['label']],
    'options': YES_NO,
  }


def _boolq(ex):
  return {
    'passage': ex['passage'],
    'question': ex['question'],
    'answer': ['no', 'yes'][ex['label']],
    'options': ['no', 'yes'],
  }


def _cb(ex):
  answer = {0: 'yes', 1: 'no', 2: 'it is not possible to tell'}[ex['label']]
  return {
    'premise': ex['premise'],
    'hypothesis': ex['hypothesis'],
    'answer': answer,
    'options': NLI_OPTIONS,
  }


def _copa(ex):
  choices = [ex['choice1'], ex['choice2']]
  relation = 'cause' if ex['question'] == 'cause' else 'effect'
  return {
    'premise': ex['premise'],
    'relation': relation,
    'connective': 'because' if relation == 'cause' else 'so',
    'answer': choices[ex['label']],
    'options': choices,
  }


def _squad(ex):
  answers = ex['answers']['text']
  return (
    {
      'context': ex['context'],
      'question': ex['question'],
      'title': ex['title'],
      'answer': answers[0],
      'answers': answers,
    }
    if answers
    else None
  )


def _esnli(ex):
  answer = {0: 'yes', 1: 'it is not possible to tell', 2: 'no'}[ex['label']]
  return {
    'premise': ex['premise'],
    'hypothesis': ex['hypothesis'],
    'answer': answer,
    'options': NLI_OPTIONS,
    'rationale': ex['explanation_1'],
  }


def _summary(document_key: str, summary_key: str):
  return lambda ex: {'document': ex[document_key], 'summary': ex[summary_key]}


NLI_TEMPLATES = [
  Template(
    'Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the '
    'hypothesis?{options_}'
  ),
  Template('{premise}\n\nBased on the text above, is it true that "{hypothesis}"?{options_}'),
  Template(
    'Read the passage and decide whether the statement follows from it.\n\n'
    'Passage: {premise}\nStatement: {hypothesis}{options_}'
  ),
]

SPECS = (
  templates.TaskSpec(
    name='sst2',
    source=_tfds('glue/sst2:2.0.0'),
    fields=_sst2,
    templates=[
      Template(
        'Review: "{sentence}"\nIs this movie review sentence negative or positive?{options_}'
      ),
      Template('{sentence}\n\nWhat is the sentiment of this sentence?{options_}'),
      Template('How would you describe the feeling expressed in "{sentence}"?{options_}'),
    ],
    inverted_templates=[
      Template('Write a {answer} sentence from a movie review.', '{sentence}'),
      Template('Give an example of a {answer} movie review sentence.', '{sentence}'),
    ],
    metric_fns=[metrics.accuracy],
  ),
  templates.TaskSpec(
    name='mrpc',
    source=_tfds('glue/mrpc:2.0.0'),
    fields=_mrpc,
    templates=[
      Template(
        'Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nDo these two '
        'sentences mean the same thing?{options_}'
      ),
      Template(
        '"{sentence1}"\n"{sentence2}"\n\nAre the two sentences above '
        'paraphrases of each other?{options_}'
      ),
      Template('Is "{sentence2}" a rewording of "{sentence1}"?{options_}'),
    ],
    metric_fns=[metrics.accuracy, metrics.binary_f1('yes')],
  ),
  templates.TaskSpec(
    name='rte',
    source=_tfds('glue/rte:2.0.0'),
    fields=_rte,
    templates=NLI_TEMPLATES,
    metric_fns=[metrics.accuracy],
  ),
  templates.TaskSpec(
    name='boolq',
    source=_tfds('super_glue/boolq:1.0.2'),
    fields=_boolq,
    templates=[
      Template('{passage}\n\nAnswer this question about the text: {question}?{options_}'),
      Template(
        'Read the text and answer yes or no.\n\n{passage}\n\nQuestion: {question}?{options_}'
      ),
      Template(
        'Passage: {passage}\n\nAfter reading this, is the answer to "{question}"'
        ' yes or no?{options_}'
      ),
    ],
    metric_fns=[metrics.accuracy],
  ),
  templates.TaskSpec(
    name='cb',
    source=_tfds('super_glue/cb:1.0.2'),
    fields=_cb,
    templates=NLI_TEMPLATES,
    metric_fns=[metrics.accuracy, metrics.macro_f1(NLI_OPTIONS)],
  ),
  templates.TaskSpec(
    name='copa',
    source=_tfds('super_glue/copa:1.0.2'),
    fields=_copa,
    templates=[
      Template('Premise: {premise}\nWhat is the {relation}?{options_}'),
      Template('{premise} {connective}...{options_}'),
      Template('Pick the more plausible {relation} of this event: "{premise}"{options_}'),
    ],
    metric_fns=[metrics.accuracy],
  ),
  templates.TaskSpec(
    name='squad',
    source=_tfds('squad/v1.1:3.0.0'),
    fields=_squad,
    templates=[
      Template('{context}\n\nAnswer this question using the passage: {question}'),
      Template(
        'Read this article about {title} and answer the question.\n\n{context}\n\n{question}'
      ),
      Template('Question: {question}\n\nContext: {context}\n\nAnswer:'),
    ],
    inverted_templates=[
      Template(
        '{context}\n\nWrite a question about this passage whose answer is "{answer}".', '{question}'
      ),
      Template(
        'Passage: {context}\nAnswer: {answer}\n\nWhat question does this answer?', '{question}'
      ),
    ],
    metric_fns=[metrics.squad],
    answers_field='answers',
  ),
  templates.TaskSpec(
    name='xsum',
    source=_tfds('xsum:1.1.0', ('train', 'validation', 'test')),
    fields=_summary('document', 'summary'),
    templates=[
      Template('{document}\n\nSummarize this article in one sentence.', '{summary}'),
      Template(
        'Article: {document}\n\nWhat is a one-sentence summary of the article?', '{summary}'
      ),
      Template('Write the gist of this text in a single sentence:\n\n{document}', '{summary}'),
    ],
    inverted_templates=[
      Template('Write an article that fits this one-sentence summary:\n\n{summary}', '{document}'),
    ],
    metric_fns=[metrics.rouge],
  ),
  templates.TaskSpec(
    name='cnn_dailymail',
    source=_tfds('cnn_dailymail:3.4.0', ('train', 'validation', 'test')),
    fields=_summary('article', 'highlights'),
    templates=[
      Template('{document}\n\nWrite the highlights of this news article.', '{summary}'),
      Template('Summarize the following story in a few sentences:\n\n{document}', '{summary}'),
      Template('Article: {document}\n\nHighlights:', '{summary}'),
    ],
    inverted_templates=[
      Template('Write a news article with these highlights:\n\n{summary}', '{document}'),
    ],
    metric_fns=[metrics.rouge],
  ),
  templates.TaskSpec(
    name='esnli',
    source=_tfds('esnli:0.1.0', ('train', 'validation', 'test')),
    fields=_esnli,
    templates=NLI_TEMPLATES,
    rationale_field='rationale',
    metric_fns=[metrics.accuracy],
  ),
)


def register_all(
  vocabulary: Optional[seqio.Vocabulary] = None,
  seed: int = 0,
  num_shots: int = 3,
  cap: Optional[int] = mixtures.FLAN_EXAMPLE_CAP,
) -> dict[str, list[str]]:
  """Registers every spec's variants, `<name>_mix` and `flan_mini_mixture`: the zero-
  and few-shot variants, each dataset's examples-proportional rate capped at `cap` (read
  when the mixture is first used) and shared evenly among its variants. Returns
  {dataset name: task names}.
  """
  vocabulary = vocabulary or default_vocabulary()
  weights = {}
  registered = {}
  for spec in SPECS:
    names = templates.register(spec, vocabulary, seed=seed, num_shots=num_shots)
    registered[spec.name] = names
    plain = [n for n in names if n.rsplit('_', 1)[1] in MIXED_VARIANTS]
    weights.update({n: mixtures.capped_rate(cap, share=1 / len(plain)) for n in plain})
  mixtures.register_weighted_mixture(MIXTURE, weights)
  return registered


register_all()
