"""Datasets: procedural dSprites (loads the official npz when given its path)."""
from msvae.data.dsprites import (SHAPE_NAMES, DSprites, factor_values, factors_of, index_of, rasterize,
                                 read_npz)

__all__ = ["DSprites", "SHAPE_NAMES", "factor_values", "factors_of", "index_of", "rasterize", "read_npz"]
