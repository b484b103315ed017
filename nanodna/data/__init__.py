"""Genome data: preparation (FASTA, PlantCAD tables), the on-disk store, batch streams.

    fasta.py / tables.py  ──prepare.py──▶  genome.py (store)  ──stream.py + masking.py──▶  Batch

tables.py is the one reader (and TSV writer) of tabular files; batch.py the Batch contract.
The simulator lives above this package, in nanodna.sim.

Nothing in this package imports JAX. Run `python -m nanodna.data --help` for the command line.
"""

from nanodna.errors import UserError


class DataError(UserError):
    """Bad input data. The message is one line meant for the user (the CLI prints it as is)."""
