"""Sweeps: the aggregation callback on hand-made job directories (fast), and real multiruns through run.py with
the basic, joblib and submitit-local launchers (slow)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seqep.sweep import RESULTS_CSV, RESULTS_PNG, aggregate, collect, swept_keys

from conftest import TINY as SHARED_TINY

ROOT = Path(__file__).resolve().parents[1]
TINY = [*SHARED_TINY, "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1"]


def _fake_job(sweep: Path, num: int, overrides: list[str], summary: dict) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "summary.json").write_text(json.dumps(summary))


def test_aggregate_hand_made_sweep(tmp_path):
    for num, (t, k) in enumerate([(20, 5), (20, 10), (40, 5), (40, 10), (60, 5)]):
        _fake_job(tmp_path, num, ["dataset=synth_sentiment", f"algorithm.T={t}", f"algorithm.K={k}"],
                  {"test/acc": 0.5 + t / 1000 + k / 100, "val/best_acc": 0.6, "time_s": 1.0 + num,
                   "betas": [0.0, 0.1]})
    (tmp_path / "notajob").mkdir()
    df = aggregate(tmp_path)
    assert list(df["job"]) == ["0", "1", "2", "3", "4"]
    assert swept_keys(df) == ["algorithm.T", "algorithm.K"]
    assert list(df["algorithm.T"]) == [20, 20, 40, 40, 60] and df.loc[3, "test/acc"] == pytest.approx(0.64)
    on_disk = pd.read_csv(tmp_path / RESULTS_CSV)
    assert len(on_disk) == 5 and on_disk.loc[4, "algorithm.K"] == 5 and on_disk.loc[0, "betas"] == "[0.0, 0.1]"
    assert (tmp_path / RESULTS_PNG).stat().st_size > 10_000


def test_aggregate_list_valued_and_single_key_sweeps(tmp_path):
    for num, beta in enumerate([0.05, 0.1, 0.2]):
        _fake_job(tmp_path, num, [f"algorithm.betas=[0.0,{beta}]", "seed=0"], {"val/best_acc": 0.7 + beta})
    df = collect(tmp_path)
    assert swept_keys(df) == ["algorithm.betas"] and df.loc[1, "algorithm.betas"] == "[0.0, 0.1]"
    aggregate(tmp_path)
    assert (tmp_path / RESULTS_PNG).exists()


def test_aggregate_without_summaries_writes_nothing(tmp_path):
    assert aggregate(tmp_path).empty and not (tmp_path / RESULTS_CSV).exists()


# ------------------------------------------------------------------------------------------ real multiruns

def run_cli(*args: str, tmp_path: Path, timeout: int = 600, status: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.output_root={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == status, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def sweep_dir_of(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    return sweep


def check_sweep(sweep: Path, expected: set[tuple], keys: list[str]) -> pd.DataFrame:
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == [str(i) for i in range(len(expected))]
    df = pd.read_csv(sweep / RESULTS_CSV)
    assert len(df) == len(expected)
    assert {tuple(row) for row in df[keys].itertuples(index=False)} == expected
    assert df["test/acc"].between(0, 1).all() and df["val/best_acc"].between(0, 1).all()
    assert (sweep / RESULTS_PNG).stat().st_size > 10_000
    return df


@pytest.mark.slow
def test_two_by_two_multirun_basic_launcher(tmp_path):
    run_cli("-m", "algorithm.T=3,4", "algorithm.K=1,2", *TINY, "logger=wandb", "sweep_name=grid", tmp_path=tmp_path)
    sweep = sweep_dir_of(tmp_path)
    assert sweep.name.endswith("_grid")
    check_sweep(sweep, {(3, 1), (3, 2), (4, 1), (4, 2)}, ["algorithm.T", "algorithm.K"])
    group = f"{sweep.parent.name}_{sweep.name}"
    for job in range(4):  # every job's W&B run is grouped under the sweep
        config = yaml.safe_load((sweep / str(job) / "config.yaml").read_text())
        assert config["logger"]["wandb"]["group"] == group
        assert list((sweep / str(job) / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_sweep_group_with_joblib_launcher(tmp_path):
    # sweep=t_k's grid (T 10,20,40 x K 4,8) narrowed on the command line: command-line values win
    run_cli("sweep=t_k", "launcher=local_parallel", "algorithm.T=3,4", "algorithm.K=2", *TINY, "logger=none",
            tmp_path=tmp_path)
    sweep = sweep_dir_of(tmp_path)
    assert sweep.name.endswith("_t_k")
    check_sweep(sweep, {(3, 2), (4, 2)}, ["algorithm.T", "algorithm.K"])


@pytest.mark.slow
def test_betas_sweep_basic_launcher(tmp_path):
    run_cli("sweep=betas", "algorithm.betas=[0.0,0.05],[0.0,0.2]", "algorithm.T=3", "algorithm.K=1", *TINY,
            "logger=none", tmp_path=tmp_path)
    check_sweep(sweep_dir_of(tmp_path), {("[0.0, 0.05]",), ("[0.0, 0.2]",)}, ["algorithm.betas"])


@pytest.mark.slow
def test_slurm_local_launcher_runs_two_jobs(tmp_path):
    run_cli("-m", "launcher=slurm_local", "algorithm.K=1,2", "algorithm.T=3", *TINY, "logger=none", tmp_path=tmp_path)
    sweep = sweep_dir_of(tmp_path)
    check_sweep(sweep, {(1,), (2,)}, ["algorithm.K"])
    assert list((sweep / ".submitit").glob("*/*_log.out"))


@pytest.mark.slow
def test_readme_seeds_by_algorithms_sweep_is_one_directory(tmp_path):
    """The README's `python run.py -m seed=0,1 algorithm=ep,bptt`, unpinned: the jobs' names differ (ep_..., bptt_...)
    but they share one sweep directory, one multirun.yaml, one W&B group and one table of two configurations."""
    run_cli("-m", "seed=0,1", "algorithm=ep,bptt", *TINY, "logger=wandb", tmp_path=tmp_path)
    sweep = sweep_dir_of(tmp_path)  # exactly one
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    assert (sweep / "multirun.yaml").is_file() and len(list(tmp_path.rglob("multirun.yaml"))) == 1
    groups = {yaml.safe_load((sweep / str(j) / "config.yaml").read_text())["logger"]["wandb"]["group"]
              for j in range(4)}
    assert groups == {f"{sweep.parent.name}_{sweep.name}"}
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(summary["configuration"]) == ["algorithm=ep", "algorithm=bptt"]
    assert list(summary["test/acc n"]) == [2, 2] and summary["test/acc std"].notna().all()
    runs = pd.read_csv(sweep / RESULTS_CSV)
    ep = runs[runs["algorithm"] == "ep"]["test/acc"]
    assert summary.loc[0, "test/acc mean"] == pytest.approx(ep.mean())
    assert summary.loc[0, "test/acc std"] == pytest.approx(ep.std(ddof=1))
    md = (sweep / "sweep_summary.md").read_text()
    assert md.startswith("| configuration | runs | failed |") and "± " in md


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["none", "local_parallel", "slurm_local"])
def test_a_failing_job_sinks_nothing(tmp_path, launcher):
    """-m algorithm.T=-1,5 (the bad value first): job 1 still runs, the table lists job 0 as failed with its
    one-line error, and only then does the process exit non-zero, saying how many jobs failed."""
    proc = run_cli("-m", f"launcher={launcher}", "algorithm.T=-1,5", "algorithm.K=1", *TINY, "logger=none",
                   tmp_path=tmp_path, status=1)
    assert "1 of 2 jobs failed: 0" in proc.stdout
    sweep = sweep_dir_of(tmp_path)
    runs = pd.read_csv(sweep / RESULTS_CSV)
    assert list(runs["status"]) == ["failed", "completed"]
    assert runs.loc[0, "error"] == "algorithm.T=-1 must be > 0" and 0 <= runs.loc[1, "test/acc"] <= 1
    assert (sweep / RESULTS_PNG).is_file() and "| algorithm.T=-1 | 1 | 1 |" in (sweep / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_results_command_over_runs_and_sweeps(tmp_path):
    """python -m seqep.results over a sweep directory and a single run, mixed: one table, the differing keys."""
    run_cli("-m", "seed=0,1", "algorithm.T=3", "algorithm.K=1", *TINY, "logger=none", tmp_path=tmp_path)
    run_cli("algorithm.T=4", "algorithm.K=1", *TINY, "logger=none", tmp_path=tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "seqep.results", str(tmp_path / "multirun"),
                           str(tmp_path / "20*" / "*"), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 runs; configurations differ in: algorithm.T" in proc.stdout
    table = pd.read_csv(out / "results.csv")
    assert list(table["configuration"]) == ["algorithm.T=3", "algorithm.T=4"]
    assert list(table["test/acc n"]) == [2, 1]
    assert (out / "results.png").stat().st_size > 10_000 and len(pd.read_csv(out / "results_runs.csv")) == 3
    bad = subprocess.run([sys.executable, "-m", "seqep.results", str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nope" in bad.stderr


@pytest.mark.slow
def test_optuna_search_writes_its_best_trial_and_every_trial(tmp_path):
    """hparams_search=optuna (TPE, in memory): 3 trials, each a job; the sweeper's best trial is the best row of
    seqep's trials table; with a sqlite study a second call continues the same study."""
    search = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
              *TINY, "logger=none"]
    run_cli(*search, tmp_path=tmp_path / "memory")
    sweep = sweep_dir_of(tmp_path / "memory")
    assert sweep.name.endswith("_optuna")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    runs = pd.read_csv(sweep / RESULTS_CSV)
    assert len(runs) == 3 and (runs["status"] == "completed").all()
    assert best["best_value"] == pytest.approx(runs["val/best_acc"].max())
    tops = runs[runs["val/best_acc"] == best["best_value"]]  # the best trial is one of them (ties possible)
    assert ((tops["algorithm.T"] == best["best_params"]["algorithm.T"])
            & (tops["algorithm.K"] == best["best_params"]["algorithm.K"])).any()
    db = tmp_path / "study.db"
    for _ in range(2):
        run_cli(*search[:2], "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                f"hydra.sweeper.storage=sqlite:///{db}", *TINY, "logger=none", tmp_path=tmp_path / "db")
    import optuna

    assert len(optuna.load_study(study_name="seqep", storage=f"sqlite:///{db}").trials) == 4


@pytest.mark.slow
def test_a_requeued_job_resumes_from_its_last_checkpoint(tmp_path):
    """What SLURM does at a time limit, with submitit's local executor: the job gets SIGUSR2 (submitit's timeout
    signal), is requeued with the same arguments, and the requeued job resumes from its own last.pt."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = ["-m", "launcher=slurm_local", "seed=0", *TINY, "trainer.epochs=6", "trainer.limit_train_batches=null",
            "dataset.n_train=960", "logger=none", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    epochs = lambda: [json.loads(line)["epoch"] for p in tmp_path.glob("multirun/*/*/0/metrics.jsonl")
                      for line in p.read_text().splitlines() if '"kind": "epoch"' in line]
    while len(epochs()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert len(epochs()) >= 2, "the job did not get to epoch 2"
    subprocess.run(["pkill", "-USR2", "-f", "submitit.core._submit"], check=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    sweep = sweep_dir_of(tmp_path)
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert "Requeued job" in log and "this job ran before" in log and "resumed from" in log
    assert epochs() == [1, 2, 3, 4, 5, 6]  # no epoch twice, none lost
    runs = pd.read_csv(sweep / RESULTS_CSV)
    assert list(runs["status"]) == ["completed"] and runs.loc[0, "epochs"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "slurm_local"])
def test_a_killed_job_process_sinks_nothing(tmp_path, launcher):
    """SIGKILL to one job's process (what the OOM killer does): that job is recorded as failed, the others run to
    the end, the table is written, the exit status says a job failed."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = ["-m", f"launcher={launcher}", "seed=0,1,2", *TINY, "trainer.epochs=4", "trainer.limit_train_batches=null",
            "dataset.n_train=960", "logger=none", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("multirun/*/*/*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.2)
    if launcher == "local_parallel":  # the pool worker that runs job 0 wrote its pid
        (pid_file,) = tmp_path.glob("multirun/*/*/.pids/0")
        pids = [int(pid_file.read_text())]
    else:  # submitit: the first job's process started first
        pids = sorted(int(p) for p in subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True,
                                                     text=True).stdout.split())[:1]
    assert pids, "no job process found"
    os.kill(pids[0], 9)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-3000:]
    runs = pd.read_csv(sweep_dir_of(tmp_path) / RESULTS_CSV)
    assert sorted(runs["status"]) == ["completed", "completed", "failed"]
    assert runs.loc[runs["status"] == "failed", "error"].str.startswith("the job's process died").all()
    assert "1 of 3 jobs failed" in out


def test_slurm_launcher_without_slurm_is_one_line(tmp_path):
    if shutil.which("sbatch"):
        pytest.skip("this machine has SLURM")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "launcher=slurm", "seed=0,1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: launcher=slurm submits jobs with SLURM's sbatch, which this machine does not have: run it on the "
        "cluster's login node, or try the same code path here with launcher=slurm_local"]


# ------------------------------------------------------------------------------------------ W&B sweep files

WANDB_SWEEPS = [p for p in sorted((ROOT / "sweeps").glob("*.yaml")) if "program" in yaml.safe_load(p.read_text())]


def test_wandb_sweep_files_exist():
    assert {p.name for p in WANDB_SWEEPS} >= {"t_k.yaml", "betas.yaml"}


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_file_values_are_valid_overrides(path):
    from hydra import compose, initialize_config_dir

    from seqep.config import validate

    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "run.py" and spec["method"] in {"grid", "random", "bayes"}
    assert "${args_no_hyphens}" in spec["command"] and "logger.wandb.mode=online" in spec["command"]
    fixed = [c for c in spec["command"] if "=" in c and not c.startswith("${")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for key, param in spec["parameters"].items():
            for value in param["values"]:  # formatted the way the agent does: key=str(value)
                validate(compose("config", overrides=[*fixed, f"{key}={value}"]))
