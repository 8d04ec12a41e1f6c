"""phi workbook: the library behind the stage notebooks (see README.md and DESIGN)."""

__version__ = "0.1.0"
