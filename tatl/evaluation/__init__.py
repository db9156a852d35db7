"""Analyses of a finished run: the generalisation bound of Section 4.4."""
