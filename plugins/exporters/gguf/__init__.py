"""The built-in ``gguf`` exporter and its engine: llama.cpp files from the merged model.

``exporter`` is the plugin (options, provenance, file names, the entry point's hook); the
rest is the engine it drives, kept beside it like any third-party plugin's, and it uses
only ``lorapipe.plugin``. ``families`` describes each supported architecture as llama.cpp
lays it out, ``vocab`` its tokenizer; ``writer`` streams both into a GGUF file, each
weight in the type ``mix`` picks (llama-quantize's choice), K-quants encoded by
``kquants``. ``adapter`` writes the LoRA adapter alone (llama.cpp's ``--lora``),
``modelfile`` an Ollama Modelfile per file, ``score`` each file's response perplexity
through llama.cpp beside merged/'s.
"""
