"""A fake RunPod GraphQL API on 127.0.0.1 for the executor tests.

It answers the queries the `runpod` SDK sends (gpuTypes, podFindAndDeployOnDemand, pod, myself
{pods}, podStop, podTerminate), records every request, and "runs" a pod by executing its start
command (dockerArgs) locally in a subprocess with the pod's environment, in a folder of its own.
When that process ends the pod goes to EXITED, as `runpodctl stop pod` would make it; terminate
kills the process and forgets the pod. The real SDK points here through RUNPOD_API_BASE_URL."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_STR = r'"((?:[^"\\]|\\.)*)"'


def _unescape(s: str) -> str:
    return json.loads(f'"{s}"')


def _field(query: str, name: str):
    m = re.search(rf"\b{name}: {_STR}", query)
    return _unescape(m.group(1)) if m else None


class FakeRunPod:
    def __init__(self, root: Path, fail_pods: bool = False):
        self.root = Path(root)
        self.requests: list = []         # (Authorization header, query) per request
        self.pods: dict = {}             # id -> pod dict
        self.procs: dict = {}            # id -> Popen
        self.terminated: list = []
        self.fail_pods = fail_pods       # pods report failure: the container command exits 1
        self._lock = threading.Lock()
        self._n = 0
        # A pod of someone else's (another run, another project) that must survive everything.
        self.pods["foreign-pod"] = {"id": "foreign-pod", "name": "my-notebook", "desiredStatus": "RUNNING",
                                    "costPerHr": 0.5, "runtime": {"ports": []}}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ pods
    def _deploy(self, query: str) -> dict:
        env = {}
        for key, value in re.findall(rf"\{{ key: {_STR}, value: {_STR} \}}", query):
            env[_unescape(key)] = _unescape(value)
        with self._lock:
            self._n += 1
            pod_id = f"pod{self._n:03d}"
        workdir = self.root / pod_id
        workdir.mkdir(parents=True)
        fakebin = self.root / "fakebin"
        fakebin.mkdir(exist_ok=True)
        # The image has the storage plugins already: the job's `pip install --target` is a no-op.
        (fakebin / "pip").write_text("#!/bin/sh\nexit 0\n")
        (fakebin / "pip").chmod(0o755)
        env.update(
            PATH=f"{fakebin}:{Path(sys.executable).parent}:/usr/bin:/bin",
            HOME=str(workdir),
            RUNPOD_POD_ID=pod_id,
            SNAKEMAKE_RUNPOD_WORKDIR=str(workdir),
            RUNPOD_GPU_COUNT=re.search(r"gpuCount: (\d+)", query).group(1),
        )
        if self.fail_pods:
            command = "exit 1"
        else:
            command = _field(query, "dockerArgs")
        log = open(workdir / "pod.log", "w")
        proc = subprocess.Popen(["sh", "-c", command], env=env, cwd=workdir, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        pod = {"id": pod_id, "name": _field(query, "name"), "desiredStatus": "RUNNING",
               "gpuTypeId": _field(query, "gpuTypeId"), "costPerHr": 21.52,
               "gpuCount": int(re.search(r"gpuCount: (\d+)", query).group(1)),
               "runtime": {"ports": []}, "lastStatusChange": "Rented by User", "env": env}
        with self._lock:
            self.pods[pod_id] = pod
            self.procs[pod_id] = proc
        threading.Thread(target=self._reap, args=(pod_id, proc), daemon=True).start()
        return {"id": pod_id, "imageName": _field(query, "imageName"), "env": [], "machineId": "m1",
                "machine": {"podHostId": f"{pod_id}-host"}}

    def _reap(self, pod_id, proc):
        proc.wait()
        with self._lock:
            if pod_id in self.pods:
                self.pods[pod_id]["desiredStatus"] = "EXITED"
                self.pods[pod_id]["lastStatusChange"] = f"Exited with code {proc.returncode}"

    def _terminate(self, pod_id):
        with self._lock:
            self.terminated.append(pod_id)
            self.pods.pop(pod_id, None)
            proc = self.procs.get(pod_id)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def answer(self, query: str) -> dict:
        if "gpuTypes" in query:
            gpu = _field(query, "id")
            return {"data": {"gpuTypes": [{"id": gpu, "displayName": gpu, "maxGpuCount": 8,
                                           "memoryInGb": 80, "lowestPrice": None}]}}
        if "podFindAndDeployOnDemand" in query:
            return {"data": {"podFindAndDeployOnDemand": self._deploy(query)}}
        if "podTerminate" in query:
            self._terminate(_field(query, "podId"))
            return {"data": {"podTerminate": None}}
        if "podStop" in query:
            pod_id = _field(query, "podId")
            with self._lock:
                self.pods[pod_id]["desiredStatus"] = "EXITED"
            return {"data": {"podStop": {"id": pod_id, "desiredStatus": "EXITED"}}}
        if re.search(r"\bpod\(input", query):
            with self._lock:
                pod = self.pods.get(_field(query, "podId"))
            return {"data": {"pod": pod and {k: v for k, v in pod.items() if k != "env"}}}
        if "myself" in query and "pods" in query:
            with self._lock:
                pods = [{k: v for k, v in p.items() if k != "env"} for p in self.pods.values()]
            return {"data": {"myself": {"pods": pods}}}
        return {"errors": [{"message": f"fake RunPod: unsupported query {query[:80]!r}"}]}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append((self.headers.get("Authorization"), body["query"]))
                data = json.dumps(fake.answer(body["query"])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
