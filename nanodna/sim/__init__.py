"""The genome simulator: a multi-species plant-like genome set with known conservation.

    config ──▶ ancestor ──evolve──▶ species ──simulate──▶ fasta/, store/, truth/, eval/, card
                                                            (eval_tables, card)
    provision: the training default's simulated set (paths, generate if missing)

Sits above nanodna.data (it writes genome stores and tables) and nanodna.evaluation.metrics
(its ROC AUCs), below training. Run `python -m nanodna.sim --help`.
"""
