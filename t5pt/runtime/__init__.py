"""What every command stands on, and nothing T5-specific: one filesystem layer for local
paths and gs:// (fs), user-facing errors and the checks of every value a user sets
(errors, checks), logs and metrics files (logs, metrics_log), the gin command line
(gin_utils), devices, hosts and meshes (distributed, partitioning, backend_check), and the
SeqIO data pipeline with its vocabularies (data, vocabularies).

Imports nothing else of t5pt.
"""
