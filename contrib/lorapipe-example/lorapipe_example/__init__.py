"""A third-party lorapipe plugin, as small as a real one can be."""
