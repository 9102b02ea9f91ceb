"""Built-in plugins: registered through lorapipe's own entry points, like any other."""
