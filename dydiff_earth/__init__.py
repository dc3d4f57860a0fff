"""dydiff-earth: probabilistic forecasts of gridded fields with Dynamical Diffusion."""

from __future__ import annotations

__version__ = "0.1.0"
