"""The hooks a lorapipe plugin may implement.

A plugin is a module named by an entry point in the ``lorapipe.plugins`` group::

    [project.entry-points."lorapipe.plugins"]
    my_csv = "my_package.csv_loader"

lorapipe imports every such module once, when a command first needs the registry
(``lorapipe validate``, any stage, ``lorapipe components``), and registers the functions
in it that are marked ``@hookimpl`` and named after a spec below. A module that fails to
import is reported by ``lorapipe plugins`` and skipped.

Each ``lorapipe_register_<kinds>`` hook is called once per process, with a ``register``
callable; call it once per component class the plugin provides. The class's ``name``
is what users write in YAML, and its ``Options`` pydantic model validates the options
they write next to it. ``register`` refuses, naming the plugin, a class that is not a
subclass of the kind's base, has no ``name``, leaves an abstract method unimplemented,
or takes a name another plugin registered. The hooks return nothing.

This page says when and how each kind is used; what a component must do is said once,
in its base class's docstrings (``lorapipe.plugin.Loader`` ...). The kinds and their
hooks are declared once, by those base classes (``components.KINDS``); a test checks
that every kind has its hook here. Everything a plugin needs is importable from
``lorapipe.plugin``.
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

    Built once per YAML field that names one (``data.loader``, ``data.validation.loader``,
    ``data.test.loader``, an option declared ``Part[Loader]``); ``prepare`` reads each
    source once, from start to end. Example::

        @hookimpl
        def lorapipe_register_loaders(register):
            register(CsvLoader)
    """


@hookspec
def lorapipe_register_chat_templates(register: Register) -> None:
    """Register chat templates: subclasses of ``lorapipe.plugin.ChatTemplate``.

    ``data.template`` names one; ``prepare`` encodes every conversation with it (in
    forked worker processes), and evaluation and ``chat`` render prompts with the same
    component. Example::

        @hookimpl
        def lorapipe_register_chat_templates(register):
            register(ChatMLTemplate)
    """


@hookspec
def lorapipe_register_target_detectors(register: Register) -> None:
    """Register target detectors: subclasses of ``lorapipe.plugin.TargetDetector``.

    Asked once per run, before training, usually of the weightless model; unless
    ``adapter.target_detector`` names one, in ascending ``priority``. Example::

        @hookimpl
        def lorapipe_register_target_detectors(register):
            register(Gpt2Targets)
    """


@hookspec
def lorapipe_register_quantizers(register: Register) -> None:
    """Register quantizers: subclasses of ``lorapipe.plugin.Quantizer``.

    ``model.quantizer`` names one; it loads the base for training, evaluation and
    ``chat``, and its size figures feed the memory estimate printed before training.
    Merging always reloads the base without it. Example::

        @hookimpl
        def lorapipe_register_quantizers(register):
            register(Int8Quantizer)
    """


@hookspec
def lorapipe_register_objectives(register: Register) -> None:
    """Register training objectives: subclasses of ``lorapipe.plugin.Objective``.

    ``train.objective`` names one (``sft`` unless it says otherwise); the ``train`` stage
    checks the prepared data has its ``columns``, then asks it for every micro batch's
    loss and for the validation loss. Example::

        @hookimpl
        def lorapipe_register_objectives(register):
            register(DpoObjective)
    """


@hookspec
def lorapipe_register_evaluators(register: Register) -> None:
    """Register evaluators: subclasses of ``lorapipe.plugin.Evaluator``.

    ``evaluate.evaluators`` names them; the ``evaluate`` stage calls each in turn on the
    held-out split, once, with one ``EvalContext`` shared by all. Example::

        @hookimpl
        def lorapipe_register_evaluators(register):
            register(RougeL)
    """


@hookspec
def lorapipe_register_exporters(register: Register) -> None:
    """Register exporters: subclasses of ``lorapipe.plugin.Exporter``.

    ``export.exporters`` names them; ``check`` runs on the base before training and on
    ``merged/`` before the ``export`` stage writes. Example::

        @hookimpl
        def lorapipe_register_exporters(register):
            register(GgufExporter)
    """
