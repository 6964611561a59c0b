"""Prepare a corpus once into token shards: ``python training/prepare_data.py source=<...> out=<dir>``.

Examples:
    python training/prepare_data.py source=corpus.jsonl out=data/corpus            # GPT-2 BPE
    python training/prepare_data.py source=shakespeare tokenizer=char out=data/sc val_fraction=0.1
    python training/prepare_data.py source=hf:roneneldan/TinyStories out=data/ts workers=8

Then: ``python training/run_experiment.py data=shards data.path=<dir>``. Settings and what
each does: configs/prepare_data.yaml.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from llm_scratch.compat import one_line_hydra_errors
from llm_scratch.data.prepare import PrepareSettings, prepare
from llm_scratch.errors import UserError, exit_on_user_error
from llm_scratch.train.compose import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        for key in ("source", "out"):
            if OmegaConf.is_missing(cfg, key):
                raise UserError(
                    f"{key} is not set: python training/prepare_data.py source=<file, folder, "
                    "corpus name or hf:<dataset>> out=<dataset folder>."
                )
        values = OmegaConf.to_container(cfg, resolve=True)
        known = {f.name for f in PrepareSettings.__dataclass_fields__.values()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"Unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
            )
        for key in ("source", "out"):
            values[key] = None if values[key] is None else str(values[key])
        prepare(PrepareSettings(**values))


if __name__ == "__main__":
    with one_line_hydra_errors():  # a bad override: one "error:" line, exit status 2
        main()
