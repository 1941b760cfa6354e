"""matpac_jax: MATPAC, M2D and BEATs self-supervised audio pre-training in JAX."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load any supported checkpoint for embedding (see `matpac_jax.inference.load`)."""
    # Imported here, not above: `import matpac_jax.hear` runs this file first and
    # must set JAX's GPU memory variables (torch_shell) before anything imports JAX.
    from matpac_jax.inference import load as _load

    return _load(path, **kwargs)
