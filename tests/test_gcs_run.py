"""A whole run on a real gs:// bucket (fake-gcs-server on loopback, tests/gcs_emulator.py):
train, resume, infer, eval and export with every output directory in the bucket, and
nothing of it on local disk."""

import json
import os

import pytest

from t5pt.runtime import fs
from tests.conftest import REPO, run_module, train_in_process
from tests.test_eval import eval_in_process
from tests.test_infer import infer_in_process

pytestmark = pytest.mark.slow
TASK = 'synthetic_heldout_max'


def test_train_resume_infer_eval_export_on_gcs(
  gcs_bucket, gcs_dir, base_checkpoint, tmp_path, monkeypatch
):
  work = tmp_path / 'cwd'
  work.mkdir()
  monkeypatch.chdir(work)
  run, infer_dir, eval_dir, export_dir = (
    f'{gcs_dir}/{name}' for name in ('run', 'infer', 'eval', 'export')
  )
  macros = dict(
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    CHECKPOINT_PERIOD=2,
    EVAL_PERIOD=2,
    LOG_PERIOD=2,
    BATCH_SIZE=8,
    INFER_EVAL=True,
  )
  first = train_in_process('gin/t5_1_1_tiny_prompt.gin', run, TRAIN_STEPS=2, **macros)
  resumed = train_in_process('gin/t5_1_1_tiny_prompt.gin', run, TRAIN_STEPS=4, **macros)
  assert (first['start_step'], resumed['start_step']) == (0, 2)

  predictions = infer_in_process(infer_dir, CHECKPOINT_PATH=run, BATCH_SIZE=16)
  assert predictions == f'{infer_dir}/{TASK}-validation.jsonl'
  metrics = eval_in_process(eval_dir, CHECKPOINT_PATH=run, BATCH_SIZE=16)
  assert metrics[TASK]['sequence_accuracy'] == pytest.approx(
    resumed['infer_eval'][TASK]['sequence_accuracy']
  )
  # The export CLI as a user runs it: a fresh process that finds the bucket from its env.
  result = run_module(
    't5pt.export',
    f'--model_dir={run}',
    f'--prompt_npy={export_dir}/prompt.npy',
    f'--hf_dir={export_dir}/hf',
    f'--peft_dir={export_dir}/peft',
    env=gcs_bucket.env,
    cwd=str(work),
  )
  assert result.returncode == 0, result.stderr

  prefix = gcs_dir[len(gcs_bucket.url) + 1 :] + '/'
  stored = {name[len(prefix) :] for name in gcs_bucket.objects(prefix)}
  for expected in (
    'run/config.gin',
    'run/metrics.jsonl',
    'run/checkpoint_4/meta/metadata',
    'run/checkpoint_4/params/_METADATA',
    'run/checkpoint_4/opt_state/_METADATA',
    f'run/inference_eval/{TASK}-metrics.jsonl',
    f'run/inference_eval/{TASK}-000004.jsonl',
    f'infer/{TASK}-validation.jsonl',
    f'eval/{TASK}-metrics.jsonl',
    f'eval/{TASK}-000004.jsonl',
    'export/prompt.npy',
    'export/hf/config.json',
    'export/hf/model.safetensors',
    'export/hf/t5pt_export.json',
    'export/peft/adapter_config.json',
    'export/peft/adapter_model.safetensors',
  ):
    assert expected in stored, (expected, sorted(stored))
  for split in ('train', 'eval', 'infer_eval'):
    assert any(n.startswith(f'run/{split}/events.out.tfevents.') for n in stored), split
  assert any(n.startswith(f'eval/{TASK}/events.out.tfevents.') for n in stored)
  assert not any('.parts' in n or n.endswith('.tmp') for n in stored), sorted(stored)

  lines = [json.loads(l) for l in fs.read_text(f'{run}/metrics.jsonl').splitlines()]
  keys = [(l['split'], l['step']) for l in lines]
  assert len(keys) == len(set(keys)), 'a resumed run logs each step once'
  assert ('train', 4) in keys and ('infer_eval', 4) in keys

  assert os.listdir(work) == [], 'nothing of the run may land in the working directory'
  assert not os.path.exists(os.path.join(REPO, 'gs:'))
