"""Planning a run on hardware this machine does not have (`python -m matpac_jax.plan`)."""
