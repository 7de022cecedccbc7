"""script.py: the job script is valid bash, runs the job once under the pod-side limit, and stores
its exit code after its log."""
import subprocess

from snakemake_executor_plugin_runpod.script import REPORT_SNAKEFILE, JobScript, job_script

SCRIPT = JobScript(exec_job="python -m snakemake --target-jobs 'train:seed=1' --mode remote", label="job 3 (rule train) attempt 2",
                   snakemake_version="9.27.1", storage_args="--default-storage-provider s3 --default-storage-prefix s3://b/r",
                   status_dir=".snakemake-runpod/abcd1234/3/attempt2", time_limit_seconds=1800,
                   setup_command="pip install brotli", check_command="python -c 'import torch'")


def test_job_script_is_valid_bash_with_the_limit_and_the_report():
    script = job_script(SCRIPT)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "timeout --kill-after=60 1800 bash job-run.sh" in script
    assert "--default-storage-provider s3 --default-storage-prefix s3://b/r" in script
    assert "'[runpod-executor] job 3 (rule train) attempt 2'" in script
    run_part = script.split("<<'RUNPOD_EXECUTOR_RUN'\n")[1].split("RUNPOD_EXECUTOR_RUN\n")[0]
    subprocess.run(["bash", "-n"], input=run_part, text=True, check=True)
    # setup, then the GPU check, then the check command, then the job
    order = [run_part.index(s) for s in ("pip install brotli", "nvidia-smi", "import torch", "--target-jobs")]
    assert order == sorted(order)


def test_report_stores_the_exit_code_after_the_log():
    report = REPORT_SNAKEFILE.format(status="S")
    assert 'input: "S/pod.log"' in report.split("rule log")[0]      # exit_code waits for the log
    assert 'output: "S/exit_code"' in report
