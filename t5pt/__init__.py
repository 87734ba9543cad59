"""t5pt: parameter-efficient tuning (soft prompts first) of frozen T5 / Flan-T5 in JAX."""

__version__ = '0.1.0'
