"""Training a run: everything checked and built before anything is written, resume or
initialise (run_setup), the loop itself (trainer), optimizers with schedules (optimizers),
the report of what the data yields (data_report), and the memory planner behind
`python -m t5pt.plan` (planner).

Imports t5pt.serving, t5pt.tools, t5pt.checkpoints, t5pt.model and t5pt.runtime.
"""
