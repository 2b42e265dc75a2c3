"""Datasets: procedural dSprites (loads the official npz when given its path)."""
from msvae.data.dsprites import (CLASS_SIZES, SHAPE_NAMES, DSprites, factor_classes, factor_values,
                                 factors_of, index_of, rasterize, read_npz)

__all__ = ["CLASS_SIZES", "DSprites", "SHAPE_NAMES", "factor_classes", "factor_values", "factors_of",
           "index_of", "rasterize", "read_npz"]
