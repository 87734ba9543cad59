"""The T5 network and what runs on it: the encoder-decoder in flax.linen with t5x's
parameter names and axes (network, layers), the soft prompt (prompts), the other tuning
methods and the int8 base (adapters, quantization), losses and metrics (models), the
jitted train and eval step bodies (steps), and decoding on a KV cache (decoding).

Imports only t5pt.runtime.
"""
