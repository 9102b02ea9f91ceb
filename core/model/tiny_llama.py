"""The built-in ``tiny-llama`` model: a small random Llama built from a seed.

lorapipe has to run end to end — prepare, train, merge, export to GGUF — on
machines that cannot download a model. So it builds one: a 4-layer
Llama-architecture model with grouped-query attention (so KV-head handling is
exercised downstream) and a byte-level BPE tokenizer whose pre-tokenizer,
special tokens and chat template follow Llama 3, so the same code paths (chat
templates, assistant masking, the llama.cpp ``llama-bpe`` pre-tokenizer) are
taken as for a real Llama 3 checkpoint. The weights are random; the model is
for plumbing, not for quality.

The builder is deterministic: the same seed gives byte-identical files, so a
cached copy, a rebuilt copy and a copy on another machine are interchangeable.
The tokenizer is trained on a fixed in-module corpus and does not depend on the
seed. Bump ``_CACHE_NAME`` whenever the output of :func:`build_tiny_llama`
changes, so stale caches are not reused.

torch, tokenizers and transformers are imported inside the builders, so that
resolving an ordinary model path never pays for them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_LLAMA = "tiny-llama"
_CACHE_NAME = "tiny-llama-v3"

VOCAB_SIZE = 2048

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
# Added after the learned BPE tokens (ids 2042-2047), where Llama 3 keeps its specials.
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER, EOT]

# Llama 3's pre-tokenizer split, verbatim; llama.cpp recognises it as "llama-bpe".
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3's template without its default system prompt. The BOS is emitted as
# text; apply_chat_template tokenizes with add_special_tokens=False, so the
# post-processor does not add a second one.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Small, fixed training text for the BPE merges. It only has to give enough
# distinct pairs for a 2048-token vocabulary with sensible English merges; any
# text still encodes because all 256 byte symbols are in the base alphabet.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a step.
It was a bright cold day in April, and the clocks were striking thirteen.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my
purse, I thought I would sail about a little and see the watery part of the world.
All happy families are alike; each unhappy family is unhappy in its own way.
It is a truth universally acknowledged, that a single man in possession of a good fortune must be in
want of a wife. In the beginning was the word, and the word was short.
Once upon a time there was a little village at the edge of a great forest. The people who lived
there were farmers and bakers, teachers and builders, and every morning they walked to the market
square to buy bread, fresh vegetables, cheese, apples, and warm coffee. Children played near the
fountain while their parents talked about the weather, the harvest, and the news from the city.
The weather today is sunny with a few clouds in the afternoon. Tomorrow there will be rain in the
north and strong winds along the coast. Temperatures will reach 21 degrees in the south.
Please remember to bring your umbrella, your keys, and your phone before you leave the house.
Question: What is the capital of France? Answer: The capital of France is Paris.
Question: How many days are there in a week? Answer: There are seven days in a week.
Question: Who wrote the play Hamlet? Answer: William Shakespeare wrote Hamlet around 1600.
Question: What is two plus three? Answer: Two plus three is five, so 2 + 3 = 5.
system

You are a helpful assistant. Answer the question truthfully and explain your reasoning step by step.
user

Can you help me write a short poem about the sea?
assistant

Of course! Here is a short poem.
The sea is wide, the sea is deep, it sings the sailors off to sleep.
user

Thank you, that's lovely.
assistant

You're welcome! I'm glad you liked it. Let me know if you'd like another one, or if there's
anything else I can do for you today.
First, we read the data. Second, we clean it. Third, we train the model. Finally, we evaluate the
results and write a report that says whether the change helped or hurt.
Learning a new language takes time, patience and practice. Read every day, listen to music, speak
with friends, and don't be afraid of making mistakes. Mistakes are how people learn.
The scientist measured the temperature of the water, the pressure of the air and the length of the
shadow at noon. She wrote each number carefully in her notebook and compared them with last year's.
History teaches us that great cities rise and fall. Rome, Athens, Cairo and Beijing have seen
empires come and go, yet their streets are still full of people, markets, music and stories.
Numbers and dates: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 42, 64, 99, 100, 128, 256, 512,
1000, 1024, 2048, 4096, 65536, 3.14159, 2.71828, 1e-5, 0.02, 50%, $19.99, #1, 12:30, 2024-01-15.
The meeting is on Monday, Tuesday, Wednesday, Thursday, Friday, Saturday or Sunday, in January,
February, March, April, May, June, July, August, September, October, November or December.
Punctuation matters: commas, periods. Questions? Exclamations! Colons: semicolons; "quotes" and
'single quotes', (parentheses), [brackets], {braces}, <angles>, dashes - and -- and ellipses...
slashes / and \\ backslashes, under_scores, hash#tags, at@signs, a&b, x*y, a^b, ~tilde, `ticks`.
Email: someone@example.com. Web: https://www.example.org/path/to/page?query=value&other=1#section.
Café, naïve, résumé, façade, jalapeño, Zürich, München, São Paulo, Kraków, Ångström, smørrebrød,
東京, 京都, 日本語, 中文, 한국어, Москва, Ελλάδα, العربية, हिन्दी, 🙂, €, £, ¥, °C, ±, ×, ÷, →, ✓.
def add(a: int, b: int) -> int:
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

import os
import json
from pathlib import Path

with open("data.json", "r", encoding="utf-8") as handle:
    records = json.load(handle)
items = [x * 2 for x in records if x is not None]
config = {"learning_rate": 0.0002, "batch_size": 8, "epochs": 3, "name": "tiny-llama"}
function greet(name) { return "Hello, " + name + "!"; }
const total = values.reduce((sum, v) => sum + v, 0);
SELECT name, age FROM users WHERE age >= 18 ORDER BY name;
<div class="note"><p>Hello, world!</p></div>
$ pip install lorapipe && lorapipe run configs/quickstart.yaml --set train.epochs=1
"""

_WORDS = """\
the of and to in is was that for it as with be on not he by are this at from his but have an they
which or one had you were her all she there would their we him been has when who will more no if
out so said what up its about into than them can only other new some could time these two may then
do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go came
right used take three states himself few house use during without again place american around
however home small found thought went say part once general high upon school every don does got
united left number course war until always away something fact though water less public put think
almost hand enough far took head yet government system better set told nothing night end why called
didn eyes find going look asked later knew point next city business give group toward young days
let room president side social given present several order national possible rather second face per
among form important often things looked early white case john become large big need four within
felt along children saw best church ever least power development thing light seemed family interest
want members mind country area others done turned although open god service certain kind problem
began different door thus help sense means whole matter perhaps itself york times law human line
above name example action company hands local show whether five history gave today either act feet
across taken past quite anything seen having death week experience body word half really field am
car words already themselves information tell together college shall money period held keep sure
probably free seems political real behind cannot miss question air office making brought whose
special heard major problems ago became federal moment study available known result street economic
boy position reason change south board individual job society areas west close turn love community
true court force full seem am wife future age voice center woman control common policy necessary
following front sometimes six girl clear further land run students provide feel party able mother
music education university child effect level stood military short town morning total outside rate
figure class art century washington north usually leave therefore evidence million sound black
strong hard various says believe type value play surface soon mean near table lines peace modern
tax road red book personal process situation minutes increase idea english alone women gone nor
single food pay sun summer winter spring autumn tree river mountain ocean island bridge garden
kitchen window bottle letter paper pencil computer keyboard screen network server model data train
training evaluate evaluation token tokenizer vocabulary adapter layer weight weights matrix vector
tensor gradient loss accuracy learning rate batch epoch checkpoint export merge quantize file
folder path string integer float boolean list dictionary function method class object module
package import return value variable argument parameter error exception warning message report
result
"""


def corpus() -> list[str]:
    """The BPE training texts, fixed so training never varies.

    ``_CORPUS`` stays one text so its newlines and indentation are learned too
    (the chat template's blank line, code blocks). The word list is added in
    lower case, capitalised and upper case so common words get whole-word
    tokens in each form.
    """
    words = _WORDS.split()
    rows = [words[i : i + 12] for i in range(0, len(words), 12)]
    texts = [_CORPUS]
    texts += [" ".join(row) for row in rows]
    texts += [" ".join(w.capitalize() for w in row) for row in rows]
    texts += [" ".join(w.upper() for w in row) for row in rows]
    return texts


def train_byte_level_bpe(pre_tokenizer: Any, vocab_size: int) -> Any:
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on :func:`corpus`.

    Deterministic, and shared with other tiny builders (contrib's GPT-2) so each only
    chooses its pre-tokenizer and special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def _train_tokenizer():
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import Regex, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer = train_byte_level_bpe(pre_tokenizer, VOCAB_SIZE - len(SPECIAL_TOKENS))
    # As in Llama 3 and llama.cpp's "llama-bpe": a pre-token that is already in the vocab
    # is taken whole, so the GGUF export tokenizes exactly like this tokenizer.
    tokenizer.model.ignore_merges = True
    learned = tokenizer.get_vocab_size()
    if learned != VOCAB_SIZE - len(SPECIAL_TOKENS):
        raise RuntimeError(f"tiny-llama corpus too small: BPE learned {learned} tokens")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_llama(out_dir: Path, seed: int = 0) -> None:
    """Write the tiny model and its tokenizer to ``out_dir`` (a normal HF model dir).

    Deterministic: the same seed gives byte-identical files. The weights are
    initialised in float32 on CPU from ``torch.manual_seed(seed)``; the RNG state
    of the caller is restored afterwards so building has no side effects.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # .to(): a caller may have changed torch's default dtype.
        model = LlamaForCausalLM(config).to(torch.float32)
        # A trained model's head turns unit-RMS hidden states into logits of order one. At
        # the 0.02 init a frozen head caps every token's probability below 1%, so a LoRA
        # fine-tune (which leaves the head frozen) could never show what it learned.
        torch.nn.init.normal_(model.lm_head.weight, std=config.hidden_size**-0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=[eot_id, eos_id],
        pad_token_id=pad_id,
    )
    from transformers.utils import logging as hf_logging

    # a one-shard "Writing model shards" bar would break one-line errors of the first
    # command that builds the model (e.g. `lorapipe validate` on a broken config)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The template goes into tokenizer_config.json rather than transformers 5's
    # separate chat_template.jinja, so older readers of the directory find it.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)


def _cache_root() -> Path:
    root = os.environ.get("LORAPIPE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lorapipe"


def ensure_tiny_llama(cache_dir: Path | None = None) -> Path:
    """Return the cached tiny model's directory, building it on first use.

    ``cache_dir`` is the lorapipe cache root (default ``$LORAPIPE_CACHE`` or
    ``~/.cache/lorapipe``); the model lives in ``<root>/tiny-llama-v3``. The
    build goes to a temporary directory beside the target and is renamed into
    place, so the target is either absent or complete: a crashed build leaves
    no half-written model, and when two processes race the loser discards its
    copy and uses the winner's (the builds are identical anyway).
    """
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / _CACHE_NAME
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_CACHE_NAME}-", dir=root))
    try:
        build_tiny_llama(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
