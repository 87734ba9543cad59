"""A trained run put to work: decoding, scoring and rank classification (inference),
infer.sh's JSONL predictions with resume (batch_inference), many prompts on one frozen base
(prompt_bank) and their ensembles (ensemble, ensemble_evaluation), and SeqIO evaluation
of a run, standalone or during training (evaluation, seqio_outputs); decoding that runs
the tool calls a model writes (tool_decoding).

Imports t5pt.tools, t5pt.checkpoints, t5pt.model and t5pt.runtime.
"""
