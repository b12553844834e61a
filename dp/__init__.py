"""Client-side differential privacy (clipping, noise, accounting, DP-SGD glue).

Empty for now: issue 6 builds it. Depends on ``secagg`` only, never on ``attacks``.
"""
