"""Zero-shot evaluation: tables -> scores -> ROC AUC, plots.

tables.py        read and validate PlantCAD2-style tables (conservation, variant)
scoring.py       scoring rules: masked p(ref) (+ strand averaging), causal four-allele, LLR
metrics.py       ROC AUC, AUPRC, bootstrap intervals
plots.py         ROC curve and score histograms (PNG)
conservation.py  evaluate_table(): the fast path the training loop calls
report.py        a full evaluation with results.json / scores.tsv / plots (eval.py)
"""
