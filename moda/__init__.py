"""The MODA workshop: training, evaluation, catalog tools around the model files at the repository root.

Importing the package imports nothing heavy, so `moda --help` answers at once. Code that loads MODA folders imports
the model classes from `moda.model.auto_classes`, which registers them with transformers' Auto classes.
"""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it
