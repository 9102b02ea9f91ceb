"""Helpers for plugin authors, public through ``lorapipe.plugin``: templates built from
pieces (``piece_template``), trained spans located in a rendering (``masking``), and
loaders of local files (``file_loader``). The built-in plugins use them like any other."""
