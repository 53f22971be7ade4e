"""pkpd_jax: JAX-native pharmacometrics."""

__version__ = "0.1.0"
