"""Pure primitives: no I/O, no global RNG, no imports from higher layers.

Randomness is always passed in as an :class:`~securefed.primitives.rng.Entropy`.
"""
