"""Generation-based evaluators for lorapipe: ``exact_match``, ``rouge_l`` and ``bleu``."""
