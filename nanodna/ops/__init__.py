"""Numerical ops shared by the models."""
