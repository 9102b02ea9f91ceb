"""lorapipe loaders for tabular files: ``json``, ``csv`` and ``parquet``."""
