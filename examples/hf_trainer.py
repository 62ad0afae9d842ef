"""A learned lr under Hugging Face's Trainer, with Trainer's own schedule.

A 2-layer GPT-2 built from a config (nothing is downloaded) learns to
predict the characters of a Python standard-library source file. The
optimizer is an rc.HyperOptimizer whose level 0 (AdamW) learns its lr;
Trainer keeps everything else: its schedule (``--schedule``, any
``lr_scheduler_type``; "linear" decay to 0 is Trainer's default), gradient
clipping, logging and checkpoints. ``LearnedHyperparameters`` adds the
learned values to Trainer's logs.

    pip install "recurse[transformers]"
    python examples/hf_trainer.py [--steps 200] [--schedule linear|constant|cosine] [--compare]
"""

from __future__ import annotations

import argparse
import inspect
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import recurse as rc
from recurse.integrations.transformers import LearnedHyperparameters

BLOCK = 32


class CharacterBlocks(torch.utils.data.Dataset):
    """Consecutive blocks of ``BLOCK`` bytes of a standard-library source file, as GPT-2 inputs and labels."""

    def __init__(self, blocks: int = 256) -> None:
        text = inspect.getsource(argparse).encode("utf-8")
        ids = torch.tensor(list(text[: blocks * BLOCK]), dtype=torch.long)
        self.blocks = ids.reshape(-1, BLOCK)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """2 layers, 2 heads, width 32, byte vocabulary, no dropout (a resumed run repeats the same steps)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=256, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM")
    return GPT2LMHeadModel(config)


def tower() -> rc.Optimizer:
    """AdamW learning its lr from 1e-3, under an RMS-normalised SGD level."""
    return rc.stack(rc.AdamW(1e-3, learn="lr"), rc.SGD(0.05, normalize="rms"))


def trainer_for(out: str, *, steps: int, schedule: str = "linear", save_steps: int | None = None,
                optimizer: str = "tower", seed: int = 0) -> Trainer:
    """A Trainer over the tiny GPT-2, stepping ``tower()`` ("tower") or
    Trainer's own AdamW at its defaults ("adamw") or at the tower's starting lr ("adamw 1e-3")."""
    model = tiny_gpt2(seed)
    arguments = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=8, lr_scheduler_type=schedule,
        warmup_steps=steps // 10 if schedule == "cosine" else 0, logging_steps=max(1, steps // 4),
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, report_to="none",
        use_cpu=True, seed=seed, disable_tqdm=True, dataloader_num_workers=0, weight_decay=0.01,  # (rc.AdamW's)
        learning_rate=1e-3 if optimizer == "adamw 1e-3" else 5e-5)
    optimizers = (None, None)
    if optimizer == "tower":
        optimizers = (rc.HyperOptimizer(model.parameters(), tower()), None)
    return Trainer(model=model, args=arguments, train_dataset=CharacterBlocks(), optimizers=optimizers,
                   callbacks=[LearnedHyperparameters()])


def evaluation_loss(trainer: Trainer) -> float:
    """The mean loss over the training blocks (the same text the run saw)."""
    model = trainer.model.eval()
    with torch.no_grad():
        blocks = CharacterBlocks().blocks
        return model(input_ids=blocks, labels=blocks).loss.item()


RUNS = [("tower", "linear"), ("tower", "constant"), ("tower", "cosine"), ("adamw", "linear"),
        ("adamw 1e-3", "linear"), ("adamw 1e-3", "cosine")]


def compare(steps: int) -> list[dict]:
    """The tower under Trainer's schedules beside Trainer's own AdamW (at
    its default lr 5e-5, and at the tower's starting lr 1e-3): one row each."""
    rows = []
    for optimizer, schedule in RUNS:
        with tempfile.TemporaryDirectory() as out:
            trainer = trainer_for(out, steps=steps, schedule=schedule, optimizer=optimizer)
            seconds = trainer.train().metrics["train_runtime"]
        learned = trainer.state.log_history[-1].get("recurse/0.lr")
        rows.append({"optimizer": optimizer, "schedule": schedule, "loss": evaluation_loss(trainer),
                     "learned_lr": learned, "seconds": seconds})
    print("| optimizer | schedule | loss after training | learned lr | seconds |\n|---|---|---|---|---|")
    for row in rows:
        learned = "" if row["learned_lr"] is None else f"{row['learned_lr']:.3g}"
        print(f"| {row['optimizer']} | {row['schedule']} | {row['loss']:.3f} | {learned} | {row['seconds']:.1f} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--schedule", default="linear", help="Trainer's lr_scheduler_type (default linear)")
    parser.add_argument("--compare", action="store_true",
                        help="a table: the tower under three schedules beside Trainer's own AdamW")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.steps)
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(out, steps=args.steps, schedule=args.schedule)
        trainer.train()
    learned = [entry["recurse/0.lr"] for entry in trainer.state.log_history if "recurse/0.lr" in entry]
    loss = evaluation_loss(trainer)
    print(f"learned lr at each log: {', '.join(f'{value:.3g}' for value in learned)}; loss {loss:.3f}")
    return learned, loss


if __name__ == "__main__":
    main()
