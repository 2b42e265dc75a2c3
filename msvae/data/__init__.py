"""Datasets: procedural dSprites and 3D Shapes (each loads its official file when given its path),
scikit-learn's digits, and a user's own images (``images.ImageFiles``)."""
from msvae.data.dsprites import (CLASS_SIZES, SHAPE_NAMES, DSprites, factor_classes, factor_values,
                                 factors_of, index_of, rasterize, read_npz)
from msvae.data.images import DigitImages, ImageFiles
from msvae.data.shapes3d import Shapes3D

__all__ = ["CLASS_SIZES", "DSprites", "DigitImages", "ImageFiles", "SHAPE_NAMES", "Shapes3D", "factor_classes",
           "factor_values", "factors_of", "index_of", "rasterize", "read_npz"]
