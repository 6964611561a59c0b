"""lm-evaluation-harness's command line with our model registered:
``python -m llm_scratch.eval.lm_eval_cli --model llm_scratch --model_args ckpt_path=<run> ...``.

The harness's own ``lm_eval`` command finds only its built-in models (it loads no plugins), so
this imports :mod:`llm_scratch.eval.lm_eval_model`, which registers ``llm_scratch``, and runs
the harness's command line with the same arguments. Our input errors (a missing checkpoint, a
character the tokenizer lacks) are one ``error:`` line, as everywhere in the package.
"""

from __future__ import annotations

import sys

from llm_scratch.errors import UserError, report_user_error


def main() -> int:
    try:
        from lm_eval.__main__ import cli_evaluate

        import llm_scratch.eval.lm_eval_model  # noqa: F401 - registers "llm_scratch"
    except ImportError as error:
        print(
            f"error: lm-evaluation-harness is not installed ({error}): pip install -e '.[eval]'",
            file=sys.stderr,
        )
        return 2
    try:
        cli_evaluate()
    except UserError as error:
        return report_user_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
