"""Everything on disk that holds weights: what the user pointed at (a base in any format, a
t5pt run, a t5x run, one step of either) recognised and opened in one place (opening), the
readers of the base formats (base_readers), runs as models ready to use (trained_model),
the formats themselves (HF names and configs, legacy T5X, safetensors: hf_format,
t5x_legacy, safetensors_io), a run's own orbax checkpoints and record (run_checkpoints),
and the ways out and in (exporting: prompt .npy, HF folder, PEFT adapter; peft_importing).

Imports t5pt.model and t5pt.runtime.
"""
