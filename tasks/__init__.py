"""SeqIO task registries for t5pt."""
