"""securefed: privacy-hardened federated pre-training of causal language models.

Layers, bottom-up (a lower layer never imports a higher one):
primitives -> secagg, ckks -> privacy -> training -> runtime -> transport -> cli.
"""

__version__ = "0.1.0"
