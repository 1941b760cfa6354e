"""matpac_jax: MATPAC, M2D and BEATs self-supervised audio pre-training in JAX."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load any supported checkpoint for embedding (see `matpac_jax.inference.load`)."""
    from matpac_jax.inference import load as _load

    return _load(path, **kwargs)
