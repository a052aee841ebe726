"""astrochem_jax: neural surrogates for stiff astrochemical networks, in JAX/Flax.

Pipeline stages (each a module that never imports a later one):
generate (chemistry solver) -> preprocess (shards) -> train (components) -> surrogates/benchmark.
"""

__version__ = "0.1.0"
