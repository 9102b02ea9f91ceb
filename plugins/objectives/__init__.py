"""Built-in training objectives plugins."""
