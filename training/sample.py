"""Print samples from a trained run: ``python training/sample.py ckpt_path=<file> prompt="..."``.

Keys (key=value, like the training entry point): ckpt_path (a .ckpt file; a run directory: its
best checkpoint; last: the latest run's last.ckpt, as in training; best: the latest run's best),
prompt, prompt_file, num_samples, max_new_tokens, temperature (0: greedy), top_k, top_p, seed,
device (cpu, cuda, cuda:1, or auto); prompts_file (every prompt of a file, one per line or JSON
Lines of instruction/input, answered batch_size at a time, each printed with its response).
"""

import sys

from llm_scratch.sample import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
