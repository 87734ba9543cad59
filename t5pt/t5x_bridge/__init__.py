"""t5pt as real t5x's runner sees it: the network as a t5x module, prompt initialisers and
the trainable filter t5x's gin files bind, and what t5pt's macros mean under t5x
(t5x_network; gin/t5x/tuning.gin uses it). t5pt's own runner never imports t5x.

Imports t5pt.checkpoints, t5pt.model and t5pt.runtime.
"""
