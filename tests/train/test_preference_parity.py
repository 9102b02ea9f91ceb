"""Preference objectives against TRL, the independent implementation: on tiny-llama with
a LoRA adapter (non-zero, so policy and reference differ), the same pairs give the same
loss, implicit rewards and adapter gradients as TRL's trainer for that objective.

The pairs are token ids (prompt, chosen, rejected), so both sides see exactly the same
sequences: TRL's collator builds its batch from them, lorapipe's from the prepared-data
form (labels -100 on the prompt). TRL averages a batch's per-pair losses; lorapipe sums
them and the loop divides by the step's pairs, so a batch's mean is compared. TRL's
trainer prepares the model it is given, so it is built first and both score the model as
prepared (its bf16 cast of a QLoRA adapter undone: lorapipe keeps adapters in fp32).
"""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import torch

from lorapipe.config import TrainConfig
from lorapipe.plan import build_objective
from lorapipe.train.batching import collate_pairs

trl = pytest.importorskip("trl")

TOLERANCE = 1e-4
PAD = 0


def _pairs(vocab: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Prompts and replies of different lengths, so padding and per-token means matter."""
    generator = torch.Generator().manual_seed(7)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    return [(ids(6), ids(3), ids(5)), (ids(9), ids(7), ids(2)), (ids(4), ids(4), ids(6))]


def _policy(quantized: bool = False) -> Any:
    """tiny-llama (fp32, or NF4 with fp32 compute) with a seeded non-zero LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lorapipe.model.source import resolve_model_path

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"), **kwargs)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _ours(model: Any, objective: dict[str, Any],
          pairs: list) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    built = build_objective(TrainConfig.model_validate({"objective": objective}))
    examples = [((p + c, [-100] * len(p) + c), (p + r, [-100] * len(p) + r))
                for p, c, r in pairs]
    batch = collate_pairs([[e] for e in examples], PAD)
    model.zero_grad()
    result = built.loss(model, batch)
    count = built.count(batch)
    (result.total / count).backward()
    metrics = {name: value / count for name, value in result.metrics.items()}
    return result.total.item() / count, metrics, _grads(model)


def _grads(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def _trl(model: Any, trainer_cls: Any, args: Any,
         pairs: list) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    trainer = trainer_cls(model=model, processing_class=tokenizer, train_dataset=text,
                          args=args)
    _undo_trl_preparation(model)
    model.zero_grad()
    if hasattr(trainer, "get_batch_loss_metrics"):  # CPO/ORPO: their own collated form
        loss, metrics = _trl_cpo(trainer, model, pairs)
    else:
        inputs = trainer.data_collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                                        for p, c, r in pairs])
        loss = trainer.compute_loss(model, inputs)
        metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    loss.backward()
    return loss.item(), metrics, _grads(model)


def _undo_trl_preparation(model: Any) -> None:
    if "ref" in model.peft_config:
        # TRL's reference for an adapter it did not create is a copy of it as it starts;
        # lorapipe's adapters start at zero, so its reference is the base: make TRL's so.
        model.delete_adapter("ref")
    for param in model.parameters():  # TRL casts a QLoRA adapter to bf16; lorapipe trains fp32
        if param.requires_grad:
            param.data = param.data.float()


def _trl_cpo(trainer: Any, model: Any, pairs: list) -> tuple[torch.Tensor, dict[str, float]]:
    """CPO/ORPO take a batch of padded prompt/chosen/rejected columns with labels."""
    rows = []
    for p, c, r in pairs:
        rows.append({"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p),
                     "chosen_input_ids": p + c, "chosen_attention_mask": [1] * (len(p) + len(c)),
                     "chosen_labels": [-100] * len(p) + c,
                     "rejected_input_ids": p + r,
                     "rejected_attention_mask": [1] * (len(p) + len(r)),
                     "rejected_labels": [-100] * len(p) + r})
    batch = trainer.data_collator(rows)
    loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    return loss, {name: float(value) for name, value in metrics.items()}


def _same_grads(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name, grad in ours.items():
        difference = float((grad - theirs[name]).abs().max())
        assert difference <= TOLERANCE, f"{name}: gradients differ by {difference:.2e}"


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_dpo_matches_trl(loss_type: str, quantized: bool) -> None:
    model = _policy(quantized)
    pairs = _pairs(model.config.vocab_size)
    beta = 0.1 if loss_type != "ipo" else 0.5
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False,
                         beta=beta, loss_type=[loss_type], max_length=None)
    trl_loss, trl_metrics, trl_grads = _trl(model, trl.DPOTrainer, args, pairs)
    loss, metrics, grads = _ours(model, {"name": "dpo", "beta": beta, "loss_type": loss_type},
                                 pairs)
    assert loss == pytest.approx(trl_loss, abs=TOLERANCE)
    for ours_name, theirs in (("reward_chosen", "rewards/chosen"),
                              ("reward_rejected", "rewards/rejected"),
                              ("reward_margin", "rewards/margins"),
                              ("reward_accuracy", "rewards/accuracies"),
                              ("logp_chosen", "logps/chosen"),
                              ("logp_rejected", "logps/rejected")):
        assert metrics[ours_name] == pytest.approx(trl_metrics[theirs], abs=TOLERANCE), ours_name
    _same_grads(grads, trl_grads)


def test_dpo_label_smoothing_is_the_conservative_mix_of_trl_losses() -> None:
    """cDPO with ε is (1-ε)·DPO(pairs) + ε·DPO(pairs with the sides swapped), each by TRL."""
    eps = 0.2
    model = _policy()
    pairs = _pairs(model.config.vocab_size)
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False,
                         beta=0.1, loss_type=["sigmoid"], max_length=None)
    kept, _, kept_grads = _trl(model, trl.DPOTrainer, args, pairs)
    swapped, _, swapped_grads = _trl(model, trl.DPOTrainer, args,
                                     [(p, r, c) for p, c, r in pairs])
    loss, _, grads = _ours(model, {"name": "dpo", "label_smoothing": eps}, pairs)
    assert loss == pytest.approx((1 - eps) * kept + eps * swapped, abs=TOLERANCE)
    _same_grads(grads, {name: (1 - eps) * g + eps * swapped_grads[name]
                        for name, g in kept_grads.items()})


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_simpo_matches_trl_cpo(quantized: bool) -> None:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    model = _policy(quantized)
    pairs = _pairs(model.config.vocab_size)
    args = CPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False,
                     loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0,
                     max_length=None)
    trl_loss, trl_metrics, trl_grads = _trl(model, CPOTrainer, args, pairs)
    loss, metrics, grads = _ours(model, {"name": "simpo", "beta": 2.0, "gamma": 1.0}, pairs)
    assert loss == pytest.approx(trl_loss, abs=TOLERANCE)
    assert metrics["reward_chosen"] == pytest.approx(trl_metrics["rewards/chosen"],
                                                     abs=TOLERANCE)
    assert metrics["reward_accuracy"] == pytest.approx(trl_metrics["rewards/accuracies"],
                                                       abs=TOLERANCE)
    _same_grads(grads, trl_grads)


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_orpo_matches_trl_per_pair(quantized: bool) -> None:
    """TRL's ORPO averages the NLL over a batch's tokens, and over the prompt too;
    lorapipe takes it per pair over the reply (the paper's form). With one-token prompts
    (which no NLL can cover) and scored one pair at a time they agree; the batch is
    their mean."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model = _policy(quantized)
    pairs = [(p[:1], c, r) for p, c, r in _pairs(model.config.vocab_size)]
    args = ORPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False,
                      beta=0.1, max_length=None)
    losses, chosen, summed = [], [], None
    for pair in pairs:
        one_loss, one_metrics, one_grads = _trl(model, ORPOTrainer, args, [pair])
        losses.append(one_loss)
        chosen.append(one_metrics["rewards/chosen"])
        summed = one_grads if summed is None else {n: g + one_grads[n]
                                                   for n, g in summed.items()}
    loss, metrics, grads = _ours(model, {"name": "orpo", "beta": 0.1}, pairs)
    assert loss == pytest.approx(sum(losses) / len(pairs), abs=TOLERANCE)
    assert metrics["reward_chosen"] == pytest.approx(sum(chosen) / len(pairs), abs=TOLERANCE)
    _same_grads(grads, {name: g / len(pairs) for name, g in summed.items()})


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)], ids=["even", "weighted"])
def test_kto_matches_trl(weights: tuple[float, float], quantized: bool) -> None:
    """KTO on TRL's own prepared dataset: its tokenization, and the KL completions it
    fixes per batch before shuffling, which lorapipe's ``mismatched`` must reproduce from
    the examples alone (each prompt with the previous example's reply)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from lorapipe.model.source import resolve_model_path
    from lorapipe.train.batching import collate_rated, mismatched

    model = _policy(quantized)
    desirable, undesirable = weights
    texts = [("What is 2+2?", " Four.", True), ("Name a colour.", " Blue, or green.", False),
             ("Say hi.", " Hi!", True), ("Capital of Peru?", " Lima, I think.", False)]
    args = trl.KTOConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True,
                         bf16=False, beta=0.1, desirable_weight=desirable,
                         undesirable_weight=undesirable, max_length=None,
                         per_device_train_batch_size=len(texts))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    trainer = trl.KTOTrainer(
        model=model, processing_class=tokenizer, args=args, train_dataset=Dataset.from_list(
            [{"prompt": p, "completion": c, "label": label} for p, c, label in texts]))
    _undo_trl_preparation(model)
    rows = [trainer.train_dataset[i] for i in range(len(texts))]
    examples = [(r["prompt_ids"] + r["completion_ids"],
                 [-100] * len(r["prompt_ids"]) + r["completion_ids"]) for r in rows]
    kl_rows = mismatched(examples)
    assert [ids for ids, _ in kl_rows] == [r["prompt_ids"] + r["KL_completion_ids"]
                                           for r in rows]
    inputs = trainer.data_collator(rows)
    model.zero_grad()
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads, trl_kl = _grads(model), trainer._metrics["train"]["kl"][-1]

    built = build_objective(TrainConfig.model_validate({"objective": {
        "name": "kto", "desirable_weight": desirable, "undesirable_weight": undesirable}}))
    batch = collate_rated([[(*example, r["label"], kl)] for example, r, kl in zip(
        examples, rows, kl_rows, strict=True)], tokenizer.pad_token_id or PAD)
    model.zero_grad()
    result = built.loss(model, batch)
    (result.total / built.count(batch)).backward()
    assert result.total.item() / len(texts) == pytest.approx(trl_loss.item(), abs=TOLERANCE)
    assert result.metrics["kl"] / len(texts) == pytest.approx(trl_kl, abs=TOLERANCE)
    _same_grads(_grads(model), trl_grads)
