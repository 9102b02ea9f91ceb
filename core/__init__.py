"""lorapipe: fine-tune LLMs with LoRA/QLoRA from one YAML pipeline of plugins."""

from lorapipe.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
