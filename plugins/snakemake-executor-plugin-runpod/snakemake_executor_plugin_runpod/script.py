"""What the pod runs: the container start command and the job script it decodes.

The job script (bash) on the pod:
1. refuses to run a job twice: RunPod restarts a container whose command exits, on the same
   container disk, so a second start finds its own markers and either idles (job reported) or
   exits at once (the job never reported), which the executor sees as a restart;
2. runs the job under a pod-side time limit (`timeout`), its output going to the container log and
   to `job.log`: bootstrap snakemake, the setup command, the environment check (GPUs visible as
   asked, the check command), then the job's own `snakemake --target-jobs` line;
3. stores `pod.log` and then `exit_code` for this attempt in the default storage, through a
   two-rule Snakefile run with the job's own storage arguments (the executor reads them there:
   the job's exit status, never the mere presence of outputs, decides success);
4. stops its own pod (`runpodctl stop pod`), so a pod whose workflow host went away bills no GPU
   time once its job has ended.
"""

import base64
import shlex
from dataclasses import dataclass
from typing import Optional

# The job script travels base64-encoded in an environment variable: the SDK pastes env values
# and dockerArgs into a GraphQL string, where raw quotes and newlines would break the query.
JOB_SCRIPT_ENV = "SNAKEMAKE_RUNPOD_JOB_B64"

# Where the job runs inside the container. The variable exists so that a fake pod (tests) can
# give each pod its own folder; on RunPod it is unset and the container disk is used.
WORKDIR_ENV = "SNAKEMAKE_RUNPOD_WORKDIR"
DEFAULT_POD_WORKDIR = "/snakemake-job"

# GPUs the job asked for; the environment check compares it with what nvidia-smi lists.
GPUS_ENV = "SNAKEMAKE_RUNPOD_GPUS"

# The last line of the job's log, for a human reading the RunPod console.
EXIT_CODE_MARKER = "runpod_executor_exit_code="

# Exit status of `timeout` when the limit ended the job (124), or its KILL after the grace (137).
TIME_LIMIT_EXIT_CODES = (124, 137)

# Stores the log, then the exit code (its presence in storage means the log is there too).
REPORT_SNAKEFILE = """\
rule exit_code:
    input: "{status}/pod.log"
    output: "{status}/exit_code"
    shell: "cp exit_code {{output}}"

rule log:
    output: "{status}/pod.log"
    shell: "cp job.log {{output}}"
"""


@dataclass(frozen=True)
class JobScript:
    exec_job: str                  # the job's `python -m snakemake --target-jobs ...` line
    label: str                     # "job <id> rule <name> attempt <n>", for the log
    snakemake_version: str         # installed on the pod when its image lacks snakemake
    storage_args: str              # --default-storage-provider/-prefix and storage settings
    status_dir: str                # this attempt's folder in the default storage (no prefix)
    time_limit_seconds: int        # pod-side limit on everything the job does
    setup_command: Optional[str] = None
    check_command: Optional[str] = None


def _run_part(s: JobScript) -> str:
    """The part under the time limit: bootstrap, environment check, the job."""
    lines = [
        "set -u",
        f"echo {shlex.quote('[runpod-executor] ' + s.label)} on pod \"${{RUNPOD_POD_ID:-?}}\"",
        "python -c 'import snakemake' 2>/dev/null || "
        f"python -m pip install --quiet {shlex.quote('snakemake==' + s.snakemake_version)} || exit 1",
    ]
    if s.setup_command:
        lines.append(f"{{ {s.setup_command}\n}} || {{ echo '[runpod-executor] setup command failed'; exit 1; }}")
    lines += [
        "echo '[runpod-executor] environment:'; python --version",
        f'want="${{{GPUS_ENV}:-0}}"',
        'if [ "$want" -gt 0 ]; then',
        '  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || exit 1',
        '  have=$(nvidia-smi -L | grep -c "^GPU ")',
        '  if [ "$have" -ne "$want" ]; then echo "[runpod-executor] $have GPUs visible, $want asked for"; exit 1; fi',
        "fi",
    ]
    if s.check_command:
        lines.append(f"{{ {s.check_command}\n}} || {{ echo '[runpod-executor] check command failed'; exit 1; }}")
    lines.append(s.exec_job)
    return "\n".join(lines) + "\n"


def job_script(s: JobScript) -> str:
    """The script the container's start command runs (see the module docstring)."""
    report = REPORT_SNAKEFILE.format(status=s.status_dir)
    return f"""set -u
if [ -e .job-reported ]; then echo '[runpod-executor] job reported; waiting to be terminated'; exec sleep infinity; fi
if [ -e .job-started ]; then
  echo '[runpod-executor] container restarted before its job was reported: not running it twice' >&2
  exit 1
fi
touch .job-started
cat > job-run.sh <<'RUNPOD_EXECUTOR_RUN'
{_run_part(s)}RUNPOD_EXECUTOR_RUN
cat > report.smk <<'RUNPOD_EXECUTOR_REPORT'
{report}RUNPOD_EXECUTOR_REPORT
timeout --kill-after=60 {int(s.time_limit_seconds)} bash job-run.sh 2>&1 | tee job.log
ec=${{PIPESTATUS[0]}}
case "$ec" in 124|137) echo "[runpod-executor] pod-side time limit of {int(s.time_limit_seconds)} s reached" | tee -a job.log;; esac
echo "{EXIT_CODE_MARKER}$ec" | tee -a job.log
echo "$ec" > exit_code
python -m snakemake --snakefile report.smk --workflow-profile none --nolock --cores 1 --quiet all \\
    {s.storage_args} || {{ echo '[runpod-executor] could not store the exit code' >&2; exit 1; }}
touch .job-reported
if [ -n "${{RUNPOD_POD_ID:-}}" ] && command -v runpodctl >/dev/null 2>&1; then
  runpodctl stop pod "$RUNPOD_POD_ID"
fi
exec sleep infinity
"""


def docker_args() -> str:
    """Container start command: decode the job script from the environment and run it.
    No double quotes: the SDK wraps this string in double quotes inside its GraphQL query."""
    workdir = f"${{{WORKDIR_ENV}:-{DEFAULT_POD_WORKDIR}}}"
    return (
        f"bash -c 'mkdir -p {workdir} && cd {workdir} && "
        f"echo ${JOB_SCRIPT_ENV} | base64 -d > job.sh && exec bash job.sh'"
    )


def encode_script(script: str) -> str:
    return base64.b64encode(script.encode()).decode()
