"""A fake RunPod API on 127.0.0.1 for the executor tests, faithful where the executor relies on it.

GraphQL (what the `runpod` SDK and the executor send): gpuTypes, podFindAndDeployOnDemand, pod,
myself { pods }, podStop, podTerminate. REST: GET /v2/pods/{id}/logs, the container log as
Server-Sent Events ({"source", "line", "ts"} per event; `tail` lines of backfill).

A pod "runs" its container as a local subprocess: the start command (dockerArgs) with the pod's
environment, in a folder of its own that plays the container disk. As on RunPod:
- desiredStatus is only RUNNING, EXITED or TERMINATED; a terminated pod is gone (pod: null);
- a container whose command exits is started again (same disk, runtime.uptimeInSeconds from 0),
  and the pod stays RUNNING; between two starts runtime is null;
- env values `{{ RUNPOD_SECRET_name }}` become the secret's value inside the container, while
  the API shows the reference;
- the container has RUNPOD_POD_ID, RUNPOD_GPU_COUNT, a pod-scoped RUNPOD_API_KEY, `runpodctl`
  (stop pod -> EXITED, container killed, no restart) and `nvidia-smi` listing the pod's GPUs;
- "There are no longer any instances available..." answers the first `no_capacity` creates.
Failure modes for tests: `bad_image` (the container never starts: runtime stays null) and
`crash_before_job` (the container's command exits at once, so it restarts forever),
`lose_create_answers` (a create rents the pod but its answer is an error).
The real SDK points here through RUNPOD_API_BASE_URL."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

_STR = r'"((?:[^"\\]|\\.)*)"'
NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
POD_SCOPED_KEY = "pod-scoped-key-0123456789"
RESTART_DELAY_S = 0.5

RUNPODCTL = """#!{python}
import json, os, sys, urllib.request
# runpodctl stop pod <id>: the pod's own key, against the API this pod was created by
assert sys.argv[1:3] == ["stop", "pod"], sys.argv
query = 'mutation {{ podStop(input: {{podId: "%s"}}) {{ id desiredStatus }} }}' % sys.argv[3]
req = urllib.request.Request("{url}/graphql", json.dumps({{"query": query}}).encode(),
                             {{"Content-Type": "application/json",
                               "Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"]}})
print(json.load(urllib.request.urlopen(req))["data"])
"""

NVIDIA_SMI = """#!/bin/sh
n=${RUNPOD_GPU_COUNT:-0}
i=0
while [ "$i" -lt "$n" ]; do
  if [ "$1" = "-L" ]; then echo "GPU $i: $RUNPOD_GPU_TYPE (UUID: GPU-fake-$i)";
  else echo "$i, $RUNPOD_GPU_TYPE, 570.00, 81559 MiB"; fi
  i=$((i + 1))
done
"""


def _unescape(s: str) -> str:
    return json.loads(f'"{s}"')


def _field(query: str, name: str):
    m = re.search(rf"\b{name}: {_STR}", query)
    return _unescape(m.group(1)) if m else None


class FakePod:
    def __init__(self, pod_id: str, query: str, root: Path):
        self.id, self.root = pod_id, root
        self.name = _field(query, "name")
        self.gpu_type = _field(query, "gpuTypeId")
        self.gpu_count = int(re.search(r"gpuCount: (\d+)", query).group(1))
        self.command = _field(query, "dockerArgs")
        self.env = {_unescape(k): _unescape(v) for k, v in re.findall(rf"\{{ key: {_STR}, value: {_STR} \}}", query)}
        self.status = "RUNNING"
        self.last_change = "Rented by User: " + time.strftime("%c")
        self.proc = None
        self.started_at = None       # this container start
        self.starts = 0
        self.disk = root / pod_id    # the container disk: survives restarts
        self.log = root / f"{pod_id}.container.log"

    def public(self) -> dict:
        runtime = None
        if self.status == "RUNNING" and self.proc is not None and self.proc.poll() is None:
            runtime = {"uptimeInSeconds": int(time.time() - self.started_at)}
        return {"id": self.id, "name": self.name, "desiredStatus": self.status, "costPerHr": 21.52,
                "gpuCount": self.gpu_count, "lastStatusChange": self.last_change, "runtime": runtime,
                "env": [f"{k}={v}" for k, v in self.env.items()]}


class FakeRunPod:
    def __init__(self, root: Path, no_capacity: int = 0, bad_image: bool = False,
                 crash_before_job: bool = False, lose_create_answers: int = 0, secrets: dict = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list = []         # (Authorization header, query or path) per request
        self.pods: dict = {}             # id -> FakePod (or a foreign pod's dict)
        self.terminated: list = []
        self.no_capacity = no_capacity
        self.bad_image = bad_image
        self.crash_before_job = crash_before_job
        self.lose_create_answers = lose_create_answers   # creates that rent a pod but answer an error
        self.secrets = dict(secrets or {})
        self._lock = threading.RLock()
        self._n = 0
        self._closing = False
        # A pod of someone else's (another run, another project) that must survive everything.
        self.pods["foreign-pod"] = {"id": "foreign-pod", "name": "my-notebook", "desiredStatus": "RUNNING",
                                    "costPerHr": 0.5, "runtime": {"uptimeInSeconds": 5000}}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._fakebin()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._closing = True
        self.server.shutdown()
        for pod in list(self.pods.values()):
            if isinstance(pod, FakePod):
                self._kill(pod)

    def _fakebin(self):
        self.bin = self.root / "fakebin"
        self.bin.mkdir(exist_ok=True)
        for name, text in (("runpodctl", RUNPODCTL.format(python=sys.executable, url=self.url)),
                           ("nvidia-smi", NVIDIA_SMI),
                           # The image has the storage plugins already: the job's `pip install --target` is a no-op.
                           ("pip", "#!/bin/sh\nexit 0\n")):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    # ------------------------------------------------------------------ containers
    def _container_env(self, pod: FakePod) -> dict:
        env = {k: re.sub(r"\{\{ RUNPOD_SECRET_([A-Za-z0-9_-]+) \}\}", lambda m: self.secrets.get(m.group(1), ""), v)
               for k, v in pod.env.items()}
        env.update(PATH=f"{self.bin}:{Path(sys.executable).parent}:/usr/bin:/bin", HOME=str(pod.disk),
                   RUNPOD_POD_ID=pod.id, RUNPOD_GPU_COUNT=str(pod.gpu_count), RUNPOD_GPU_TYPE=str(pod.gpu_type),
                   RUNPOD_API_KEY=POD_SCOPED_KEY, SNAKEMAKE_RUNPOD_WORKDIR=str(pod.disk))
        return env

    def _start(self, pod: FakePod):
        command = "echo starting; sleep 1; exit 3" if self.crash_before_job else pod.command
        with open(pod.log, "a") as log:
            pod.proc = subprocess.Popen(["sh", "-c", command], env=self._container_env(pod), cwd=pod.disk,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pod.started_at, pod.starts = time.time(), pod.starts + 1
        threading.Thread(target=self._supervise, args=(pod, pod.proc), daemon=True).start()

    def _supervise(self, pod: FakePod, proc):
        """RunPod's restart policy: a container whose command exits is started again."""
        proc.wait()
        time.sleep(RESTART_DELAY_S)
        with self._lock:
            if not self._closing and pod.status == "RUNNING" and pod.proc is proc and pod.id in self.pods:
                self._start(pod)

    def _kill(self, pod: FakePod):
        if pod.proc is not None and pod.proc.poll() is None:
            try:
                os.killpg(pod.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the container ended between the poll and the kill (a crashing one does, every second)

    # ------------------------------------------------------------------ API
    def _deploy(self, query: str) -> dict:
        with self._lock:
            if self.no_capacity > 0:
                self.no_capacity -= 1
                raise LookupError(NO_CAPACITY)
            self._n += 1
            pod = FakePod(f"pod{self._n:03d}", query, self.root)
            pod.disk.mkdir(parents=True)
            self.pods[pod.id] = pod
            if not self.bad_image:
                self._start(pod)
        return {"id": pod.id, "imageName": _field(query, "imageName"), "env": [], "machineId": "m1",
                "machine": {"podHostId": f"{pod.id}-host"}}

    def _set_status(self, pod_id: str, status: str):
        with self._lock:
            pod = self.pods.get(pod_id)
            if status == "TERMINATED":
                self.terminated.append(pod_id)
                self.pods.pop(pod_id, None)
            elif isinstance(pod, FakePod):
                pod.status, pod.last_change = status, f"Stopped by {status.lower()} request"
        if isinstance(pod, FakePod):
            self._kill(pod)

    def _public(self, pod):
        return pod.public() if isinstance(pod, FakePod) else pod

    def answer(self, query: str) -> dict:
        if "gpuTypes" in query:
            gpu = _field(query, "id")
            return {"data": {"gpuTypes": [{"id": gpu, "displayName": gpu, "maxGpuCount": 8,
                                           "memoryInGb": 80, "lowestPrice": None}]}}
        if "podFindAndDeployOnDemand" in query:
            try:
                deployed = self._deploy(query)
            except LookupError as e:
                return {"errors": [{"message": str(e)}], "data": {"podFindAndDeployOnDemand": None}}
            with self._lock:
                lost, self.lose_create_answers = self.lose_create_answers > 0, max(self.lose_create_answers - 1, 0)
            if lost:
                return {"errors": [{"message": "upstream request timeout"}]}
            return {"data": {"podFindAndDeployOnDemand": deployed}}
        if "podTerminate" in query:
            self._set_status(_field(query, "podId"), "TERMINATED")
            return {"data": {"podTerminate": None}}
        if "podStop" in query:
            pod_id = _field(query, "podId")
            self._set_status(pod_id, "EXITED")
            return {"data": {"podStop": {"id": pod_id, "desiredStatus": "EXITED"}}}
        if re.search(r"\bpod\(input", query):
            with self._lock:
                pod = self.pods.get(_field(query, "podId"))
                # GraphQL answers the fields asked for, no more
                fields = pod and {k: v for k, v in self._public(pod).items() if re.search(rf"\b{k}\b", query)}
                return {"data": {"pod": fields}}
        if "myself" in query and "pods" in query:
            with self._lock:
                return {"data": {"myself": {"pods": [self._public(p) for p in self.pods.values()]}}}
        return {"errors": [{"message": f"fake RunPod: unsupported query {query[:80]!r}"}]}

    def log_events(self, pod_id: str, tail: int) -> list:
        path = self.root / f"{pod_id}.container.log"
        lines = path.read_text(errors="replace").splitlines()[-tail:] if path.exists() else []
        return [json.dumps({"source": "container", "line": line, "ts": "2026-01-01T00:00:00Z"}) for line in lines]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes, content_type: str):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append((self.headers.get("Authorization"), body["query"]))
                self._send(200, json.dumps(fake.answer(body["query"])).encode(), "application/json")

            def do_GET(self):
                url = urlparse(self.path)
                with fake._lock:
                    fake.requests.append((self.headers.get("Authorization"), f"GET {url.path}"))
                m = re.fullmatch(r"/v2/pods/([^/]+)/logs", url.path)
                if not m:
                    return self._send(404, b"{}", "application/json")
                tail = int(parse_qs(url.query).get("tail", ["100"])[0])
                events = "".join(f"data: {e}\n\n" for e in fake.log_events(m.group(1), tail))
                self._send(200, events.encode(), "text/event-stream")

            def log_message(self, *args):
                pass

        return Handler
