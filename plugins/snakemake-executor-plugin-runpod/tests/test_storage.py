"""storage.py: checks before any pod, and the status a pod stores, through a real fs storage provider."""
import types

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_plugin_runpod.storage import BadStatus, StatusStore, check_s3, status_dir


def _s3(**kw):
    return types.SimpleNamespace(**{"access_key": None, "secret_key": None, "region": "us-east-1",
                                    "endpoint_url": None, **kw})


def test_missing_s3_keys_name_the_variables():
    with pytest.raises(WorkflowError, match="export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        check_s3(_s3(), {})
    with pytest.raises(WorkflowError, match="export AWS_SECRET_ACCESS_KEY"):
        check_s3(_s3(), {"AWS_ACCESS_KEY_ID": "a"})
    check_s3(_s3(), {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    check_s3(_s3(access_key="a", secret_key="b"), {})          # storage-s3-access-key / -secret-key


def test_network_volume_wants_its_data_centre_as_region_and_endpoint():
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    with pytest.raises(WorkflowError, match="storage-s3-region: EU-RO-1"):
        check_s3(_s3(), keys, "EU-RO-1")
    with pytest.raises(WorkflowError, match="https://s3api-eu-ro-1.runpod.io"):
        check_s3(_s3(region="EU-RO-1"), keys, "EU-RO-1")
    check_s3(_s3(region="EU-RO-1"), {**keys, "AWS_ENDPOINT_URL": "https://s3api-eu-ro-1.runpod.io"}, "EU-RO-1")


def test_status_store_reads_what_a_pod_stored(tmp_path, monkeypatch):
    from snakemake_storage_plugin_fs import StorageProvider

    monkeypatch.chdir(tmp_path)
    import logging
    provider = StorageProvider(local_prefix=tmp_path / "local", logger=logging.getLogger("t"),
                               settings=None)
    remote = tmp_path / "remote"
    store = StatusStore(provider, str(remote))
    status = status_dir("abcd1234", "5b1c0f3e-8a1d-4c1e-9a55-0d6f7f1e2a3b", 2)
    assert status == ".snakemake-runpod/abcd1234/5b1c0f3e-8a1d-4c1e-9a55-0d6f7f1e2a3b/attempt2"
    assert store.exit_code(status) is None and store.log(status) is None
    (remote / status).mkdir(parents=True)
    (remote / status / "exit_code").write_text("124\n")
    (remote / status / "pod.log").write_text("hello\n")
    assert store.exit_code(status) == 124 and store.log(status) == "hello\n"
    store.remove(status)
    assert store.exit_code(status) is None and not (remote / status / "pod.log").exists()
    (remote / status / "exit_code").write_text("Traceback\n")
    with pytest.raises(BadStatus, match="not an exit code"):
        store.exit_code(status)
