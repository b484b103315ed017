"""Genome data: preparation (FASTA, PlantCAD tables), the on-disk store, simulation, streams.

    fasta.py / tables.py  ──prepare.py──▶  genome.py (store)  ──stream.py + masking.py──▶  batches

Nothing in this package imports JAX. Run `python -m nanodna.data --help` for the command line.
"""

from nanodna.errors import UserError


class DataError(UserError):
    """Bad input data. The message is one line meant for the user (the CLI prints it as is)."""
