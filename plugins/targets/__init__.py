"""Built-in targets plugins."""
