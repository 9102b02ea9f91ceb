"""``lorapipe chat``: talk to a run's model in the chat format it was trained on.

Prompts are rendered by the run's own chat template component (the one that made the
training labels) with the tokenizer saved in ``data/tokenizer/``, so what the model sees
here is what it learned; ``--gguf`` instead hands the conversation to llama.cpp, which
renders it with the template written into the GGUF — the way the file will be served.
Greedy decoding is the default so that an answer can be reproduced.

``--tools FILE`` gives the template tool definitions to render. The model then answers
with a tool call in its own markup, which a serving stack would parse; here it is printed
as written, special tokens included (only the token that ends the turn is left out), so a
call that is wrong by one marker shows. With ``--gguf`` it is what llama.cpp's chat
completion returns, which leaves out control tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorapipe.artifacts import RunPaths
from lorapipe.components import ChatTemplate, RecordError, Tools, UnrenderableConversation
from lorapipe.config import load_config
from lorapipe.context import RunContext
from lorapipe.errors import UserError

Write = Callable[[str], None]
Message = dict[str, str]
_PROBE = [{"role": "user", "content": "Hello"}]  # a conversation to see what tools change
HELP = "/reset clears the conversation · /system TEXT sets the system prompt · /exit ends"


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature`` 0 is greedy (and ignores the others)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


class Backend(Protocol):
    label: str

    def reply(self, messages: list[Message], write: Write, tools: Tools | None = None) -> str:
        """Stream the reply to ``messages`` (with ``tools`` defined) through ``write``;
        return it whole."""


def open_run(target: str | Path) -> RunContext:
    """The run a ``lorapipe chat`` argument names: its config file, or its directory."""
    from lorapipe.plan import build_plan

    path = Path(os.path.expandvars(os.path.expanduser(str(target))))
    if path.is_dir():
        paths = RunPaths(path)
        if not paths.resolved_config.is_file():
            raise UserError(f"{path} is not a run directory (no {paths.resolved_config.name}); "
                            "give a run's output_dir or its config file")
        return RunContext(build_plan(load_config(paths.resolved_config)), root=path)
    if not path.is_file():
        raise UserError(f"{path}: no such run directory or config file")
    return RunContext(build_plan(load_config(path)), config_file=path)


def load_tools(path: Path) -> Tools:
    """``--tools FILE``: a JSON list of tool definitions, each ``{name, description,
    parameters}`` or wrapped as ``{type: function, function: {...}}``."""
    from lorapipe.data.messages import tools_list

    where = f"--tools {path}"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not JSON ({err.msg}, line {err.lineno} column "
                        f"{err.colno})") from None
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a JSON list of tool definitions "
                        "({name, description, parameters} each)")
    try:
        tools = tools_list(value, path.name)
    except RecordError as err:
        raise UserError(f"{where}: {err.detail}") from None
    if tools is None:
        raise UserError(f"{where}: the list of tool definitions is empty")
    return tools


def _prompt(template: ChatTemplate, tokenizer: Any, messages: list[Message],
            tools: Tools | None) -> list[int]:
    features = {"tools": tools} if tools is not None else {}
    return template.generation_prompt(messages, tokenizer, **features)


def check_tools(template: ChatTemplate, tokenizer: Any, tools: Tools) -> None:
    """Refuse tools the run's template would not show the model."""
    if "tools" not in template.renders:
        raise UserError(f"--tools: chat template '{template.name}' ({template.field}) renders "
                        "no tool definitions; train with template: tokenizer and a model "
                        "whose own chat template renders tools")
    try:
        with_tools = _prompt(template, tokenizer, _PROBE, tools)
    except UnrenderableConversation as err:
        raise UserError(f"--tools: the run's chat template cannot render these tool "
                        f"definitions: {err}") from None
    try:
        without = _prompt(template, tokenizer, _PROBE, None)
    except UnrenderableConversation:
        return  # a template that renders only with tools
    if with_tools == without:
        raise UserError("--tools: the run's chat template leaves tool definitions out of "
                        "the prompt, so the model would never see them")


class TransformersBackend:
    """A transformers model, prompted through the run's chat template component."""

    def __init__(self, model: Any, tokenizer: Any, template: Any, sampling: Sampling,
                 label: str) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.sampling, self.label = sampling, label

    def _stops(self) -> set[int]:
        """The tokens generation ends a reply with (not part of what it says)."""
        listed = self.model.generation_config.eos_token_id
        listed = listed if isinstance(listed, list) else [listed]
        return {t for t in [*listed, self.tokenizer.eos_token_id] if t is not None}

    def reply(self, messages: list[Message], write: Write, tools: Tools | None = None) -> str:
        import torch
        from transformers import TextStreamer

        # With tools, the reply is shown as written: tool-call markup is often special
        # tokens, which skipping would hide. The stop token is no part of it.
        raw = tools is not None
        stops = torch.tensor(sorted(self._stops()))

        class Streamer(TextStreamer):
            def put(self, value: torch.Tensor) -> None:
                if raw and not self.next_tokens_are_prompt:
                    value = value[~torch.isin(value, stops)]
                    if not value.numel():
                        return
                super().put(value)

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                write(text)

        from lorapipe.model.pretrained import pad_token_id

        ids = torch.tensor([_prompt(self.template, self.tokenizer, messages, tools)])
        s = self.sampling
        options: dict[str, Any] = {"do_sample": False}
        if s.temperature > 0:
            torch.manual_seed(s.seed)
            options = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p,
                       "top_k": s.top_k or None}
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                max_new_tokens=s.max_new_tokens, pad_token_id=pad_token_id(self.tokenizer),
                streamer=Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=not raw),
                **options)
        reply = out[0, ids.shape[1]:]
        if raw:
            reply = reply[~torch.isin(reply, stops.to(reply.device))]
        return self.tokenizer.decode(reply, skip_special_tokens=not raw)


class GgufBackend:
    """An exported GGUF run by llama.cpp, which applies the chat template stored in it."""

    def __init__(self, path: Path, sampling: Sampling, n_ctx: int) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError("--gguf needs llama-cpp-python: "
                            "pip install 'lorapipe[llama-cpp]'") from None
        if not path.is_file():
            raise UserError(f"--gguf {path}: no such file")
        from lorapipe.manifest import MANIFEST, require_intact

        if (path.parent / MANIFEST).is_file():  # one of a run's exports: it must be intact
            require_intact(path.parent, "run `lorapipe export CONFIG` again",
                           parts=(path.name,))
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, seed=sampling.seed, verbose=False)
        self.path, self.sampling, self.label = path, sampling, f"{path.name} (llama.cpp)"

    def check_tools(self, tools: Tools) -> None:
        """Refuse tools llama.cpp would not show the model: it renders them only through
        the GGUF's own Jinja template (not a built-in format it recognised it as), and
        only if that template writes them."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if self.llm.chat_format != "chat_template.default" or not template:
            raise UserError(f"--tools: llama.cpp prompts {self.path.name} in its built-in "
                            f"'{self.llm.chat_format}' chat format, which renders no tool "
                            "definitions")
        formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
        try:
            with_tools = formatter(messages=_PROBE, tools=tools).prompt
            without = formatter(messages=_PROBE).prompt
        except Exception as err:  # noqa: BLE001 - a template may raise anything
            raise UserError(f"--tools: the chat template in {self.path.name} cannot render "
                            f"these tool definitions ({err})") from None
        if with_tools == without:
            raise UserError(f"--tools: the chat template in {self.path.name} leaves tool "
                            "definitions out of the prompt, so the model would never see them")

    def reply(self, messages: list[Message], write: Write, tools: Tools | None = None) -> str:
        s = self.sampling
        parts = []
        for chunk in self.llm.create_chat_completion(
                messages=messages, tools=tools, stream=True, max_tokens=s.max_new_tokens,
                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                write(text)
                parts.append(text)
        return "".join(parts)


def load_backend(ctx: RunContext, *, base: bool, gguf: Path | None, sampling: Sampling,
                 tools: Tools | None = None) -> Backend:
    """The model to talk to: the GGUF, the base, ``merged/``, or the base with ``adapter/``
    (in that order of preference when several are possible). ``tools`` are checked to
    reach the model's prompt before any weight is loaded."""
    config, paths = ctx.config, ctx.paths
    if gguf is not None:
        if base:
            raise UserError("--base and --gguf contradict each other; pick one")
        backend = GgufBackend(gguf, sampling, n_ctx=config.data.max_length)
        if tools is not None:
            backend.check_tools(tools)
        return backend
    from transformers import AutoModelForCausalLM

    from lorapipe.manifest import require_intact
    from lorapipe.model.loading import load_base_model
    from lorapipe.model.pretrained import from_pretrained, prepared_tokenizer
    from lorapipe.safetensors_check import require_safe_adapter, require_safe_model

    template, device = ctx.plan.template, ctx.device
    tokenizer = prepared_tokenizer(paths, config.model)
    if tools is not None:
        check_tools(template, tokenizer, tools)
    if base or not (paths.merged / "config.json").is_file():
        quantizer = ctx.plan.quantizer
        adapter = None if base else paths.require_adapter("chat with")
        model = load_base_model(config.model, dtype=ctx.dtype, device=device,
                                quantizer=quantizer)
        if adapter is not None:
            from peft import PeftModel

            require_intact(adapter, "run `lorapipe train CONFIG` again")
            # before peft sees it: it would torch.load an adapter_model.bin
            require_safe_adapter(adapter, "run `lorapipe train CONFIG` again")
            model = PeftModel.from_pretrained(model, str(adapter))
        label = "base model" if base else "base model + adapter/"
        label += f" ({quantizer.name})"
    else:
        require_intact(paths.merged, "run `lorapipe merge CONFIG` again")
        require_safe_model(paths.merged, "run `lorapipe merge CONFIG` again")
        model = from_pretrained(AutoModelForCausalLM, paths.merged,
                                trust_remote_code=config.model.trust_remote_code,
                                dtype="auto", device_map={"": device})
        label = "merged/"
    model.config.use_cache = True  # training turns the KV cache off; generation wants it
    model.eval()
    return TransformersBackend(model, tokenizer, template, sampling, label)


@dataclass
class ChatSession:
    """A conversation: the history sent with each new message, and the system prompt."""

    backend: Backend
    system: str | None = None
    tools: Tools | None = None  # offered to the model with every message
    history: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def ask(self, text: str, write: Write) -> str:
        self.history.append({"role": "user", "content": text})
        try:
            answer = self.backend.reply(self.messages(), write, self.tools)
        except BaseException:
            self.history.pop()  # an interrupted turn is not part of the conversation
            raise
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def command(self, line: str) -> str | None:
        """Apply a ``/command``; returns what to tell the user, ``None`` to end the chat."""
        name, _, rest = line.partition(" ")
        if name in ("/exit", "/quit"):
            return None
        if name == "/reset":
            self.history.clear()
            return "(conversation cleared)"
        if name == "/system":
            self.system = rest.strip() or None
            self.history.clear()
            return (f"(system prompt set: {self.system}; conversation cleared)" if self.system
                    else "(system prompt removed; conversation cleared)")
        return f"(unknown command {name}; {HELP})"


def interact(session: ChatSession, read: Callable[[str], str], write: Write) -> None:
    """The read-reply loop until ``/exit`` or end of input (Ctrl-D)."""
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            said = session.command(line)
            if said is None:
                return
            write(said + "\n")
            continue
        write("model> ")
        try:
            session.ask(line, write)
        except KeyboardInterrupt:
            write(" (interrupted)")
        write("\n")
