"""The RunPod API as the executor uses it: key resolution, secret scrubbing, and a thin wrapper
over the `runpod` SDK whose errors never carry a key or a forwarded credential.

The SDK reads RUNPOD_API_BASE_URL on every call (runpod/api/graphql.py), and so does the log
reader here, so tests point both at a fake API on 127.0.0.1 without touching this code."""

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from snakemake_interface_common.exceptions import WorkflowError

REDACTED = "***"

# RunPod's answer to a create call when no machine has the GPUs free (common for 8x H100 SXM).
NO_CAPACITY = "no longer any instances available"

# The pod fields the executor reads; runtime is null while no container runs, and its
# uptimeInSeconds starts again from 0 when the container is restarted.
POD_STATE_QUERY = """
query pod {{
    pod(input: {{podId: "{pod_id}"}}) {{
        id name desiredStatus lastStatusChange costPerHr
        runtime {{ uptimeInSeconds }}
    }}
}}
"""


def graphql_escape(value: str) -> str:
    """Escape a value for the inside of a GraphQL string literal (same rules as JSON): the SDK
    pastes env values and dockerArgs into its query between double quotes, unescaped."""
    return json.dumps(str(value))[1:-1]


def is_no_capacity(error: Exception) -> bool:
    return NO_CAPACITY in str(error).lower()
CONFIG_TOML = Path("~/.runpod/config.toml")


def resolve_api_key(explicit: Optional[str] = None, environ=os.environ, config_toml: Path = CONFIG_TOML) -> str:
    """The key from (in order) the executor setting, RUNPOD_API_KEY, or ~/.runpod/config.toml
    ([default] api_key, as `runpod config` writes it). Never echoes the key in an error."""
    if explicit:
        return explicit
    if environ.get("RUNPOD_API_KEY"):
        return environ["RUNPOD_API_KEY"]
    path = config_toml.expanduser()
    if path.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: tomli, a dependency of the runpod SDK
            import tomli as tomllib

        try:
            key = tomllib.loads(path.read_text()).get("default", {}).get("api_key")
        except (tomllib.TOMLDecodeError, OSError):
            raise WorkflowError(f"{path} is not a valid TOML file") from None
        if key:
            return key
    raise WorkflowError(
        "No RunPod API key: export RUNPOD_API_KEY, or run `runpod config` to write "
        f"{CONFIG_TOML} (the key is never read from a profile or a config file of this repo)."
    )


class Redactor(logging.Filter):
    """Replaces every registered secret by *** in log records, and in any text passed to scrub().
    Installed on the root, snakemake and runpod loggers and on every handler they have."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set = set()
        self.add(*secrets)

    def add(self, *secrets: str):
        with self._lock:
            # Short values ("1", "us") would redact ordinary words; real secrets are long.
            self._secrets.update(s for s in secrets if s and len(str(s)) >= 8)

    def scrub(self, text) -> str:
        text = str(text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

    def install(self):
        for name in ("", "snakemake", "snakemake.logging", "runpod", "urllib3"):
            log = logging.getLogger(name)
            if self not in log.filters:
                log.addFilter(self)
            for handler in log.handlers:
                if self not in handler.filters:
                    handler.addFilter(self)


class RunPodApiError(WorkflowError):
    """A RunPod API call failed; the message holds no secret."""


class RunPodApi:
    """create / get / list / terminate pods. Every SDK error becomes a WorkflowError with all
    secrets scrubbed and no chained traceback (the SDK's QueryError repeats the whole query,
    which holds the pod's environment)."""

    def __init__(self, api_key: str, redactor: Redactor):
        import runpod  # lazy: having the plugin installed must not require the SDK elsewhere

        self._runpod = runpod
        self._key = api_key
        self.redactor = redactor
        redactor.add(api_key)
        # stop/terminate in the SDK take no key argument and use the module-level one.
        runpod.api_key = api_key

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every SDK failure is reported the same way
            msg = self.redactor.scrub(f"{type(e).__name__}: {e}")
        raise RunPodApiError(f"RunPod API call {what} failed: {msg}")

    def create_pod(self, **kwargs) -> dict:
        return self._call("create_pod", self._runpod.create_pod, **kwargs)

    def get_pod(self, pod_id: str) -> Optional[dict]:
        """desiredStatus, lastStatusChange, costPerHr and runtime.uptimeInSeconds; None: no such pod."""
        from runpod.api.graphql import run_graphql_query

        query = POD_STATE_QUERY.format(pod_id=pod_id)
        return self._call("pod", run_graphql_query, query, api_key=self._key)["data"]["pod"]

    def list_pods(self) -> list:
        return self._call("get_pods", self._runpod.get_pods, api_key=self._key) or []

    def terminate_pod(self, pod_id: str):
        return self._call("terminate_pod", self._runpod.terminate_pod, pod_id)

    def pod_log(self, pod_id: str, tail_lines: int = 5000, read_seconds: float = 10.0) -> str:
        """The container's last log lines from RunPod's log stream (GET /v2/pods/{id}/logs,
        Server-Sent Events; each event's data is {"source", "line", "ts"}), read for at most
        read_seconds. Used when the pod stored no log of its own (it failed before its job)."""
        import requests

        url = f"{os.environ.get('RUNPOD_API_BASE_URL', 'https://api.runpod.io')}/v2/pods/{pod_id}/logs"
        lines, deadline = [], time.monotonic() + read_seconds
        try:
            with requests.get(url, params={"tail": tail_lines, "source": "container"}, stream=True,
                              headers={"Authorization": f"Bearer {self._key}", "Accept": "text/event-stream"},
                              timeout=(10, read_seconds)) as response:
                response.raise_for_status()
                for raw in response.iter_lines(decode_unicode=True):
                    if raw and raw.startswith("data:"):
                        lines.append(str(json.loads(raw[5:].strip()).get("line", "")))
                    if time.monotonic() > deadline:
                        break
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            if not lines:  # a live stream past its backfill ends in a read timeout: that is no error
                lines.append(self.redactor.scrub(f"[runpod-executor] no pod log: {type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - a log we cannot read must not fail the job's report
            lines.append(self.redactor.scrub(f"[runpod-executor] reading the pod's log stream failed: "
                                             f"{type(e).__name__}: {e}"))
        return self.redactor.scrub("\n".join(lines) + "\n")
