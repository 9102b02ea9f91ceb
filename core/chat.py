"""``lorapipe chat``: talk to a run's model in the chat format it was trained on.

Prompts are rendered by the run's own chat template component (the one that made the
training labels) with the tokenizer saved in ``data/tokenizer/``, so what the model sees
here is what it learned; ``--gguf`` instead hands the conversation to llama.cpp, which
renders it with the template written into the GGUF — the way the file will be served.
Greedy decoding is the default so that an answer can be reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorapipe.artifacts import RunPaths
from lorapipe.config import load_config
from lorapipe.context import RunContext
from lorapipe.errors import UserError

Write = Callable[[str], None]
Message = dict[str, str]
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

    def reply(self, messages: list[Message], write: Write) -> str:
        """Stream the reply to ``messages`` through ``write``; return it whole."""


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


class TransformersBackend:
    """A transformers model, prompted through the run's chat template component."""

    def __init__(self, model: Any, tokenizer: Any, template: Any, sampling: Sampling,
                 label: str) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.sampling, self.label = sampling, label

    def reply(self, messages: list[Message], write: Write) -> str:
        import torch
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                write(text)

        from lorapipe.model.pretrained import pad_token_id

        ids = torch.tensor([self.template.generation_prompt(messages, self.tokenizer)])
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
                streamer=Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
                **options)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


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
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, seed=sampling.seed, verbose=False)
        self.sampling, self.label = sampling, f"{path.name} (llama.cpp)"

    def reply(self, messages: list[Message], write: Write) -> str:
        s = self.sampling
        parts = []
        for chunk in self.llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=s.max_new_tokens,
                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                write(text)
                parts.append(text)
        return "".join(parts)


def load_backend(ctx: RunContext, *, base: bool, gguf: Path | None,
                 sampling: Sampling) -> Backend:
    """The model to talk to: the GGUF, the base, ``merged/``, or the base with ``adapter/``
    (in that order of preference when several are possible)."""
    config, paths = ctx.config, ctx.paths
    if gguf is not None:
        if base:
            raise UserError("--base and --gguf contradict each other; pick one")
        return GgufBackend(gguf, sampling, n_ctx=config.data.max_length)
    from transformers import AutoModelForCausalLM

    from lorapipe.manifest import require_intact
    from lorapipe.model.loading import load_base_model
    from lorapipe.model.pretrained import from_pretrained, prepared_tokenizer

    template, device = ctx.plan.template, ctx.device
    if base or not (paths.merged / "config.json").is_file():
        quantizer = ctx.plan.quantizer
        adapter = None if base else paths.require_adapter("chat with")
        model = load_base_model(config.model, dtype=ctx.dtype, device=device,
                                quantizer=quantizer)
        if adapter is not None:
            from peft import PeftModel

            require_intact(adapter, "run `lorapipe train CONFIG` again")
            model = PeftModel.from_pretrained(model, str(adapter))
        label = "base model" if base else "base model + adapter/"
        label += f" ({quantizer.name})"
    else:
        require_intact(paths.merged, "run `lorapipe merge CONFIG` again")
        model = from_pretrained(AutoModelForCausalLM, paths.merged,
                                trust_remote_code=config.model.trust_remote_code,
                                dtype="auto", device_map={"": device})
        label = "merged/"
    model.config.use_cache = True  # training turns the KV cache off; generation wants it
    model.eval()
    return TransformersBackend(model, prepared_tokenizer(paths, config.model), template,
                               sampling, label)


@dataclass
class ChatSession:
    """A conversation: the history sent with each new message, and the system prompt."""

    backend: Backend
    system: str | None = None
    history: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def ask(self, text: str, write: Write) -> str:
        self.history.append({"role": "user", "content": text})
        try:
            answer = self.backend.reply(self.messages(), write)
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
