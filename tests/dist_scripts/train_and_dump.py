"""A test worker, started by torch.distributed's launcher from tests/test_distributed.py: one
DistributedTrial (strategy from argv) on a tiny Llama trains a few steps; rank 0 saves the model;
every rank dumps the full trainable weights it holds (FSDP: gathered from the shards) and the
losses it logged, so the test can compare them with the saved model and with each other."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import easy_generation  # noqa: E402

from autoft.autotrain.distributed import init_process_group, trial_class  # noqa: E402


def main(model: str, strategy: str, out: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    rank, world, _ = init_process_group("cpu")
    trial = trial_class(strategy)(model, easy_generation(16, 4), task="generation", technique="lora",
                                  hparams={"learning_rate": 5e-3, "lora_r": 4, "lora_dropout": 0.0},
                                  batch_size=2, grad_accum=1, seq_len=32, log_every=1)
    res = trial.train(3)
    trial.save_checkpoint(out / "ckpt")
    trial.save_model(out / "model")
    full = get_model_state_dict(trial.model, options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True))
    save_file({k: v.detach().contiguous().clone() for k, v in full.items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"history": trial.history, "train_loss": res["train_loss"],
                                                      "eval": trial.evaluate("validation")["eval_loss"]}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
