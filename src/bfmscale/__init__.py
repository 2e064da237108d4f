"""bfmscale: compute-optimal scaling laws for behavioral foundation models."""

__version__ = "0.1.0"
