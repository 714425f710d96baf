"""Entry point: `python run.py [overrides]`. Hydra composes conf/ into one typed config; seqep.tasks runs it.

A user error (bad value, unknown option or key, missing file, mismatched checkpoint) prints one line
`error: ...` on stderr and exits with status 2.
"""

import errno
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seqep.config import check_group_options, register_configs, search_dirs
from seqep.data.errors import DataError
from seqep.errors import SeqepError

CONF_DIR = Path(__file__).resolve().parent / "conf"
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT)


def check_writable(overrides: list[str]) -> None:
    """The folder runs are written to must take files: one line now rather than Hydra's traceback later."""
    root = "outputs"
    for arg in overrides:
        if arg.startswith(("paths.output_root=", "hydra.run.dir=", "hydra.sweep.dir=")):
            root = arg.split("=", 1)[1]
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe = Path(root) / f".seqep-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SeqepError(f"cannot write run directories under {root} ({err.strerror}): choose a writable "
                         f"paths.output_root (or hydra.run.dir)") from None


def fail(err: Exception) -> None:
    """One line on stderr; exit 2 (a signal's stop: `stopped ...`, exit 143 / 130 as the shell would)."""
    status = getattr(err, "exit_status", 2)
    print(f"{'error: ' if status == 2 else ''}{err}", file=sys.stderr, flush=True)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from seqep.tasks import run_job

    try:
        return run_job(cfg)  # in a multirun a failing job is recorded and the others run (seqep.tasks.run_job)
    except (SeqepError, DataError) as err:
        fail(err)
    except OSError as err:  # a full disk, a read-only or vanished output directory
        if err.errno not in WRITE_ERRORS:
            raise
        fail(SeqepError(f"could not write {err.filename or 'the run directory'}: {err.strerror}; free space there "
                        f"or choose another paths.output_root"))
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which stops cleanly itself)
        print("stopped by SIGINT", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    if not {"-cp", "--config-path", "-cd", "--config-dir"} & set(sys.argv):
        try:
            check_group_options(sys.argv[1:], CONF_DIR)
            if not {"--cfg", "-c", "--help", "-h", "--info", "-i", "--hydra-help"} & set(sys.argv):
                check_writable(sys.argv[1:])
            if "launcher=slurm" in sys.argv and not shutil.which("sbatch") and not {"--cfg", "-c"} & set(sys.argv):
                raise SeqepError("launcher=slurm submits jobs with SLURM's sbatch, which this machine does not have: "
                                 "run it on the cluster's login node, or try the same code path here with "
                                 "launcher=slurm_local")
            register_configs((search_dirs(sys.argv[1:], CONF_DIR) or [CONF_DIR])[1:])  # one's own options' schemas
            for arg in sys.argv[1:]:  # a run dir given by hand: refuse it, before Hydra writes there, if in use
                if arg.startswith("hydra.run.dir="):
                    from seqep.tasks import check_run_dir_free

                    check_run_dir_free(arg.split("=", 1)[1])
        except SeqepError as err:
            fail(err)
    main()
    from seqep.sweep import FAILED  # a multirun ends here: its table lists the failed jobs; then a non-zero exit

    if FAILED:
        sys.exit(1)
