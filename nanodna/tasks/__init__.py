"""Real zero-shot tasks built from packaged genomes (Arabidopsis: `python -m nanodna.tasks`).

Layering: uses nanodna.data, nanodna.tokenizer and nanodna.evaluation.metrics; only command
lines and sweeps import it.
"""
