"""The base model: from a name in the config to a model ready to train.

``source`` turns ``model.name_or_path`` into a directory (building the built-in
``tiny_llama`` on first use); ``pretrained`` loads tokenizers and configs with clear
errors; ``loading`` loads the base as the quantizer says (or weightless, on ``meta``);
``targets`` picks the layers that get adapters; ``adapters`` injects LoRA and reports;
``estimate`` says how much memory a run will take, ``memory`` measures it. Everything
here takes explicit arguments (``setup.ModelSetup``): ``model/`` sits below the plan and
the run context. Import the submodules: this package imports nothing, so the light ones
(``source``, ``pretrained``) do not pull in peft and bitsandbytes.
"""
