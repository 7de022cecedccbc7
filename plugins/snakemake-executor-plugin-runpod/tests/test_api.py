"""api.py: key resolution, secret scrubbing, GraphQL quoting, errors without secrets."""
import logging

import pytest

from snakemake_executor_plugin_runpod import api as rp_api
from snakemake_executor_plugin_runpod.script import docker_args

API_KEY = "rpa_TESTKEY_0123456789abcdef"
S3_SECRET = "s3secret_ABCDEFGH987654321"


def test_start_command_survives_the_sdk_graphql_quoting():
    from runpod.api.mutations.pods import generate_pod_deployment_mutation
    from fake_runpod import _field

    tricky = 'echo "quoted" \\ back\nslash'
    query = generate_pod_deployment_mutation("n", "img", docker_args=rp_api.graphql_escape(docker_args()),
                                             env={"X": rp_api.graphql_escape(tricky)})
    assert _field(query, "dockerArgs") == docker_args()
    assert f'value: "{rp_api.graphql_escape(tricky)}"' in query


def test_redactor_and_key_resolution(tmp_path, caplog):
    red = rp_api.Redactor([API_KEY, "short"])
    assert red.scrub(f"Bearer {API_KEY} short") == "Bearer *** short"   # short values are not secrets
    red.install()
    logging.getLogger("snakemake").warning("key=%s", API_KEY)
    assert API_KEY not in caplog.text and "key=***" in caplog.text

    toml = tmp_path / "config.toml"
    toml.write_text(f'[default]\napi_key = "{API_KEY}"\n')
    assert rp_api.resolve_api_key(None, {}, toml) == API_KEY
    assert rp_api.resolve_api_key(None, {"RUNPOD_API_KEY": "envkey123"}, toml) == "envkey123"
    with pytest.raises(Exception, match="No RunPod API key"):
        rp_api.resolve_api_key(None, {}, tmp_path / "missing.toml")


def test_sdk_errors_are_scrubbed(monkeypatch):
    red = rp_api.Redactor()
    api = rp_api.RunPodApi(API_KEY, red)
    red.add(S3_SECRET)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(rp_api.RunPodApiError) as info:
        api.create_pod(name="x", image_name="img", env={"AWS_SECRET_ACCESS_KEY": S3_SECRET})
    assert "RunPod API call create_pod failed" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert API_KEY not in str(info.value) and S3_SECRET not in str(info.value)
    assert "no pod log" in api.pod_log("pod1", read_seconds=1)          # an unreachable log stream


def test_no_capacity_answer_is_recognised(tmp_path, monkeypatch):
    from fake_runpod import NO_CAPACITY, FakeRunPod

    with FakeRunPod(tmp_path, no_capacity=1) as fake:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
        api = rp_api.RunPodApi(API_KEY, rp_api.Redactor())
        with pytest.raises(rp_api.RunPodApiError) as info:
            api.create_pod(name="x", image_name="img", gpu_type_id="NVIDIA H100 80GB HBM3", docker_args="sleep 30")
        assert rp_api.is_no_capacity(info.value) and NO_CAPACITY in str(info.value)
        assert not rp_api.is_no_capacity(rp_api.RunPodApiError("upstream request timeout"))
        pod = api.create_pod(name="x", image_name="img", gpu_type_id="NVIDIA H100 80GB HBM3",
                             docker_args="echo hello from the container; sleep 30")
        state = api.get_pod(pod["id"])
        assert set(state) == {"id", "name", "desiredStatus", "lastStatusChange", "costPerHr", "runtime"}
        import time
        deadline = time.time() + 10
        while "hello" not in api.pod_log(pod["id"], read_seconds=2) and time.time() < deadline:
            time.sleep(0.2)
        assert "hello from the container" in api.pod_log(pod["id"], read_seconds=2)
        api.terminate_pod(pod["id"])
        assert api.get_pod(pod["id"]) is None
