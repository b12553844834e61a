"""Poisoning and inference attacks and the suite that runs them against configurations.

Empty for now: issues 7 and 8 build it. May import ``dp`` and ``secagg``.
"""
