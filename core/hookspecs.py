"""The hooks a lorapipe plugin may implement.

A plugin is a module named by an entry point in the ``lorapipe.plugins`` group::

    [project.entry-points."lorapipe.plugins"]
    my_csv = "my_package.csv_loader"

lorapipe imports every such module once, when a command first needs the registry
(``lorapipe validate``, any stage, ``lorapipe components``), and registers the functions
in it that are marked ``@hookimpl`` and named after a spec below. A module that fails to
import is reported by ``lorapipe plugins`` and skipped.

Each ``lorapipe_register_<kind>`` hook is called once per process, with a ``register``
callable; call it once per component class the plugin provides. The class's ``name``
is what users write in YAML, and its ``Options`` pydantic model validates the options
they write next to it. ``register`` refuses, naming the plugin, a class that is not a
subclass of the kind's base, has no ``name``, leaves an abstract method unimplemented,
or takes a name another plugin registered. The hooks return nothing.

Everything a plugin needs is importable from ``lorapipe.plugin``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "lorapipe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def lorapipe_register_loaders(register: Register) -> None:
    """Register data loaders: subclasses of ``lorapipe.plugin.Loader``.

    :param register: call with each loader class.

    A loader is built with its validated options once per YAML field that names it
    (``data.loader``, ``data.validation.loader``; ``self.field`` says which) and asked
    for ``records()``: every record of its source in order, as ``RawRecord``s with a
    location (file and line or row). A record it cannot parse is yielded with a
    ``RecordError`` (reason, detail), never raised, so ``prepare`` counts it as dropped
    and goes on. File-based loaders subclass ``FileLoader`` and implement ``read_file``.

    Example::

        @hookimpl
        def lorapipe_register_loaders(register):
            register(CsvLoader)
    """


@hookspec
def lorapipe_register_chat_templates(register: Register) -> None:
    """Register chat templates: subclasses of ``lorapipe.plugin.ChatTemplate``.

    :param register: call with each template class.

    A template turns conversations into token ids plus, per token, whether the loss is
    taken on it (``encode_batch``), and renders the prompt that starts a reply
    (``generation_prompt``, used by generation-based evaluators). A conversation it
    cannot express raises ``UnrenderableConversation`` and is dropped and counted.
    Templates built from fixed pieces subclass ``PieceTemplate`` and implement ``pieces``.

    Example::

        @hookimpl
        def lorapipe_register_chat_templates(register):
            register(ChatMLTemplate)
    """


@hookspec
def lorapipe_register_target_detectors(register: Register) -> None:
    """Register target detectors: subclasses of ``lorapipe.plugin.TargetDetector``.

    :param register: call with each detector class.

    A detector's ``detect(model)`` names the modules that get LoRA adapters, or returns
    ``None`` for a model it does not recognise, so the next detector (by ``priority``,
    lowest first) is asked. It is called once per run, usually on a weightless model
    (``meta`` device), so it must look at module names and types, not weights.

    Example::

        @hookimpl
        def lorapipe_register_target_detectors(register):
            register(Gpt2Targets)
    """


@hookspec
def lorapipe_register_quantizers(register: Register) -> None:
    """Register quantizers: subclasses of ``lorapipe.plugin.Quantizer``.

    :param register: call with each quantizer class.

    A quantizer decides how the frozen base is loaded for training and evaluation
    (``from_pretrained_kwargs``, ``prepare_for_training``), says what it does to the
    weights (``quantized``, ``storage_dtype``) and how much memory they take
    (``weight_bytes``, for the estimate printed before training). ``check_available``
    runs before any weight is read. Merging always reloads the base without it.

    Example::

        @hookimpl
        def lorapipe_register_quantizers(register):
            register(Int8Quantizer)
    """


@hookspec
def lorapipe_register_evaluators(register: Register) -> None:
    """Register evaluators: subclasses of ``lorapipe.plugin.Evaluator``.

    :param register: call with each evaluator class.

    ``evaluate(context)`` scores base and fine-tuned model on held-out data and returns
    ``{"base": {...}, "finetuned": {...}, "change": {...}}`` plus any JSON-able detail,
    stored under the evaluator's name in ``eval/report.json``. The ``EvalContext`` holds
    the model (adapter on; ``context.base()`` switches it off), tokenizer, template,
    dataset, pad id, the directory it may write to and a cache shared by all evaluators.

    Example::

        @hookimpl
        def lorapipe_register_evaluators(register):
            register(RougeL)
    """


@hookspec
def lorapipe_register_exporters(register: Register) -> None:
    """Register exporters: subclasses of ``lorapipe.plugin.Exporter``.

    :param register: call with each exporter class.

    ``check(model_dir)`` refuses a model the exporter cannot handle; it runs on the base
    model before training and on ``merged/`` before writing. ``export(merged_dir,
    out_dir, run)`` writes the artifacts into ``out_dir`` (``export/<name>/``) and returns
    their paths; ``run`` (a ``RunInfo``) gives provenance.

    Example::

        @hookimpl
        def lorapipe_register_exporters(register):
            register(GgufExporter)
    """
