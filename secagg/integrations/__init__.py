"""Adapters that put this library's placed pipeline inside other FL frameworks.

Each adapter lives in its own subpackage and imports its framework lazily, so ``import secagg`` never
needs one: :mod:`secagg.integrations.flower` (extra ``secagg[flower]``).
"""
