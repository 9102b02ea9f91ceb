"""GPT-2 family support for lorapipe: the ``gpt2`` target detector and a tiny local GPT-2."""
