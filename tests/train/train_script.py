"""Runs one tiny training in a subprocess (kill -9, SIGTERM and torchrun tests).

usage: train_script.py OUT_DIR CONFIG_JSON [--slow SECONDS] [--save-weights] [--nf4] [--resume]
                       [--pairs]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tinyrun  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("config")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--save-weights", action="store_true")
    parser.add_argument("--nf4", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pairs", action="store_true")  # preference pairs (objective dpo…)
    args = parser.parse_args()
    model = tinyrun.make_model(dropout=args.dropout, nf4=args.nf4)
    if args.slow:  # gives the test time to interrupt mid-run; does not touch any value
        model.register_forward_hook(lambda *_: time.sleep(args.slow))
    cfg = tinyrun.config(**json.loads(args.config))
    try:
        data = tinyrun.make_pairs if args.pairs else tinyrun.make_data
        tinyrun.run(args.out, model, data(24), data(6, seed=1), cfg, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if args.save_weights:  # every rank writes its own copy, to compare them
        from accelerate import PartialState
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        rank = PartialState().process_index
        save_file(get_peft_model_state_dict(model), str(args.out / f"rank{rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
