"""Entry point: `python run.py [overrides]`. Hydra composes conf/ into one typed config; seqep.tasks runs it.

A user error (bad value, missing file, mismatched checkpoint) prints one line `error: ...` and exits with 2.
"""

import sys

import hydra
from omegaconf import DictConfig

import seqep.config  # noqa: F401  (registers the schemas in Hydra's ConfigStore before composing)
from seqep.data.errors import DataError
from seqep.errors import SeqepError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from seqep.tasks import dispatch

    try:
        return dispatch(cfg)
    except (SeqepError, DataError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
