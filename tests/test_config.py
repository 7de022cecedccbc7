import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from pgolf.config import (KEY_WILDCARD, STAGE_SECTIONS, RunTable, apply_overrides, config_errors, expand_ablations,
                          load_config, load_schema, section_defaults, stage_key)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "config" / "schema.yaml"


@pytest.fixture
def cfg():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def test_embedded_default_has_baseline_quant_only_and_model_ablations(cfg):
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    base = table.ablations["baseline"].keys
    quant_only = table.ablations["quant_int5"].keys
    model = table.ablations["mlp3"].keys
    assert quant_only["train"] == base["train"] and quant_only["quant"] != base["quant"]
    assert model["shards"] == base["shards"] and model["train"] != base["train"]
    assert len(cfg["seeds"]) == 3


def test_every_stage_has_one_key_wildcard_and_the_rules_use_exactly_those():
    assert list(KEY_WILDCARD) == list(STAGE_SECTIONS)
    common = (ROOT / "rules" / "common.smk").read_text()
    constrained = set(re.findall(r"^\s+(\w+_key)=", common, re.M))
    in_templates = set(re.findall(r"\{(\w+_key)\}", common))
    assert constrained == in_templates == set(KEY_WILDCARD.values())


@pytest.mark.parametrize("config_name,baseline", [("config.yaml", "baseline"), ("challenge.yaml", "record")])
def test_ttt_ablation_is_eval_only_and_baseline_has_ttt_off(config_name, baseline):
    """The TTT ablation scores its baseline's artifacts (same compress key); the baseline runs no TTT."""
    from pgolf.ttt import ttt_requested

    cfg = yaml.safe_load((ROOT / "config" / config_name).read_text())
    validate(cfg, str(SCHEMA_PATH))  # fills in the schema's defaults, as the Snakefile does
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    base, ttt = table.ablations[baseline], table.ablations["ttt"]
    assert ttt.keys["compress"] == base.keys["compress"] and ttt.keys["eval"] != base.keys["eval"]
    assert ttt_requested(ttt.cfg["eval"]) and not ttt_requested(base.cfg["eval"])


def test_keys_change_only_downstream_of_the_changed_section(cfg):
    changed = apply_overrides(cfg, {"eval.stride": 32}, "x")
    same = ["docs", "tokenizer", "shards", "train", "quant", "compress"]
    assert all(stage_key(changed, s) == stage_key(cfg, s) for s in same)
    assert stage_key(changed, "eval") != stage_key(cfg, "eval")
    assert stage_key(changed, "prequant") != stage_key(cfg, "prequant")


def test_unknown_override_key_is_named(cfg):
    with pytest.raises(ValueError, match=r"ablation 'bad': unknown key 'train.mlp_mutl'"):
        apply_overrides(cfg, {"train.mlp_mutl": 3}, "bad")


def test_override_value_of_wrong_type_names_the_key(cfg):
    cfg["ablations"]["bad"] = {"quant.bits": "six"}
    with pytest.raises(ValueError, match=r"ablation 'bad': key 'quant.bits'"):
        RunTable(cfg, load_schema(SCHEMA_PATH))


def test_a_number_yaml_reads_as_text_is_named_with_how_to_write_it(cfg):
    cfg["ablations"]["bad"] = {"eval.ttt_lr": yaml.safe_load("1e-4")}  # YAML 1.1: no dot, so a string
    with pytest.raises(ValueError, match=r"key 'eval.ttt_lr': '1e-4' is not of type 'number' \(YAML reads 1e-4 as "
                                         r"text: write 0\.0001\)"):
        RunTable(cfg, load_schema(SCHEMA_PATH))
    assert yaml.safe_load("0.0001") == 1e-4


def test_inconsistent_values_are_named(cfg):
    cfg["ablations"]["bad"] = {"train.num_kv_heads": 3}
    with pytest.raises(ValueError, match=r"train.num_heads must be divisible by train.num_kv_heads"):
        RunTable(cfg, load_schema(SCHEMA_PATH))


def test_grids_expand_into_named_cells(cfg):
    cfg["grids"] = {"g": {"train.mlp_mult": [2, 3], "quant.bits": [5, 6]}}
    names = expand_ablations(cfg)
    assert "g__mlp_mult=3__bits=5" in names and len(names) == len(cfg["ablations"]) + 4
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    # grid cells that match the baseline's training share its trained model
    assert table.ablations["g__mlp_mult=2__bits=5"].keys["train"] == table.ablations["baseline"].keys["train"]


def test_an_external_ablation_has_the_data_stages_and_its_own_only(cfg):
    cfg["ablations"]["ext"] = {"external.script": "train_gpt.py", "external.env": {"ITERATIONS": 5}}
    cfg["ablations"]["ext_longer"] = {"external.script": "train_gpt.py", "external.env": {"ITERATIONS": 9}}
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    ext, base = table.ablations["ext"], table.ablations["baseline"]
    assert ext.external and not base.external
    assert list(ext.keys) == ["docs", "tokenizer", "shards", "external"] and "external" not in base.keys
    assert ext.keys["shards"] == base.keys["shards"]  # the same data as pgolf's cells
    assert table.ablations["ext_longer"].keys["external"] != ext.keys["external"]
    assert table.params("external", ext.keys["external"])["env"] == {"ITERATIONS": 5}


def test_an_external_env_variable_set_from_the_dag_is_named(cfg):
    cfg["ablations"]["ext"] = {"external.script": "train_gpt.py", "external.env": {"DATA_PATH": "/elsewhere"}}
    with pytest.raises(ValueError, match=r"ablation 'ext': external.env.DATA_PATH is set from the DAG"):
        RunTable(cfg, load_schema(SCHEMA_PATH))


def test_missing_baseline_is_named(cfg):
    cfg["baseline"] = "nope"
    with pytest.raises(ValueError, match="config key 'baseline'"):
        RunTable(cfg)


def test_params_lookup_by_key(cfg):
    table = RunTable(cfg)
    key = table.ablations["quant_int5"].keys["quant"]
    assert table.params("quant", key)["bits"] == 5
    with pytest.raises(KeyError, match="no ablation has quant key"):
        table.params("quant", "0000000000")


def test_challenge_config_validates_and_each_ablation_switches_one_thing_off():
    cfg = yaml.safe_load((ROOT / "config" / "challenge.yaml").read_text())
    validate(cfg, str(SCHEMA_PATH))
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    record = table.ablations["record"]
    train = record.cfg["train"]
    assert (train["num_layers"], train["model_dim"], train["num_heads"], train["num_kv_heads"]) == (11, 512, 8, 4)
    assert cfg["tokenizer"]["vocab_size"] == 8192 and train["batch_tokens"] == 786432 and train["seq_len"] == 2048
    assert train["loop_layers"] == [4, 5] and train["loop_repeats"] == 3 and train["xsa"] and train["unet_skips"]
    assert table.ablations["rtn"].keys["train"] == record.keys["train"]  # quant-only: shares the models
    for name in ("no_xsa", "no_loop", "no_unet", "relu2"):
        assert table.ablations[name].keys["train"] != record.keys["train"]
        assert table.ablations[name].keys["shards"] == record.keys["shards"]
    from pgolf.model import ModelConfig
    model_cfg = ModelConfig.from_train_cfg(train, cfg["tokenizer"]["vocab_size"])
    assert model_cfg.schedule(True) == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5, 6, 7, 8, 9, 10]


def test_only_selects_ablations_and_names_unknown_ones(cfg):
    cfg["only"] = ["baseline", "mlp3"]
    assert list(RunTable(cfg).ablations) == ["baseline", "mlp3"]
    cfg["only"] = ["mlp3"]
    with pytest.raises(ValueError, match="config key 'baseline'"):
        RunTable(cfg)
    cfg["only"] = ["baseline", "mlp4"]
    with pytest.raises(ValueError, match="config key 'only': no ablation named 'mlp4'"):
        RunTable(cfg)


def test_one_gpu_overlay_runs_only_the_record_on_one_rank():
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config" / "challenge.yaml").read_text())
    update_config(cfg, yaml.safe_load((ROOT / "config" / "one_gpu.yaml").read_text()))
    validate(cfg, str(SCHEMA_PATH))
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    assert list(table.ablations) == ["record"]
    assert table.ablations["record"].cfg["train"]["nproc"] == 1


# Code that a test or a benchmark may call without the workflow keeps a default for some config keys;
# each must be the schema's, which is what the workflow fills in.
def code_defaults():
    """(section, key, default in code, where) for every such default."""
    from pgolf.artifact import compress
    from pgolf.evaluate import evaluate_tokens
    from pgolf.fastpath import configure_cuda
    from pgolf.model import ModelConfig

    found = [("train", f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory(),
              "ModelConfig") for f in dataclasses.fields(ModelConfig)
             if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    for section, fn, keys in [("compress", compress, ("codec", "level")), ("eval", evaluate_tokens, ("compile",)),
                              ("train", configure_cuda, ("attention_backend",))]:
        params = inspect.signature(fn).parameters
        found += [(section, key, params[key].default, fn.__qualname__) for key in keys]
    return found


def test_every_default_in_code_is_the_schemas():
    defaults = {section: section_defaults(section) for section in ("train", "compress", "eval")}
    found = code_defaults()
    assert len(found) >= 16
    for section, key, value, where in found:
        assert key in defaults[section], f"{where}: {section}.{key} has no default in config/schema.yaml"
        assert value == defaults[section][key], \
            f"{where}: {section}.{key} defaults to {value!r} in code, {defaults[section][key]!r} in config/schema.yaml"


def test_config_errors_covers_every_section():
    cfg = {"docs": {"num_docs": 10, "num_val_docs": 10},
           "train": dict(model_dim=64, num_heads=4, num_kv_heads=3, num_layers=4, rope_dims=None, loop_layers=[1, 2],
                         batch_tokens=100, seq_len=32, nproc=1, grad_accum_steps=1),
           "eval": {"stride": 64, "seq_len": 32},
           "external": {**section_defaults("external"), "env": {"SEED": 1}}}
    errors = config_errors(cfg)
    named = [e.split()[0].split("=")[0] for e in errors]
    assert named == ["docs.num_val_docs", "train.num_heads", "train.batch_tokens", "eval.stride", "external.env.SEED"]


def test_two_gpu_smoke_overlay_is_the_record_on_real_text_one_gpu_per_seed(shared_data):
    from snakemake.utils import update_config

    from pgolf.preflight import check_runs

    cfg = yaml.safe_load((ROOT / "config" / "challenge.yaml").read_text())
    update_config(cfg, yaml.safe_load((ROOT / "config" / "two_gpu_smoke.yaml").read_text()))
    validate(cfg, str(SCHEMA_PATH))
    # the overlay reads .ref/smoke/ copies of these shared files
    cfg["docs"]["path"] = str(shared_data / Path(cfg["docs"]["path"]).name)
    cfg["tokenizer"]["model"] = str(shared_data / Path(cfg["tokenizer"]["model"]).name)
    table = RunTable(cfg, load_schema(SCHEMA_PATH))
    assert list(table.ablations) == ["record"] and len(table.seeds) == 2
    train = table.ablations["record"].cfg["train"]
    assert train["nproc"] == 1 and train["device"] == "cuda" and train["max_wallclock_seconds"] <= 120
    check_runs({name: a.cfg for name, a in table.ablations.items()})  # data present, artifact fits


@pytest.mark.parametrize("name", ["config.yaml", "challenge.yaml"])
def test_load_config_fills_defaults_as_the_workflow_does(name):
    path = ROOT / "config" / name
    snakemake_view = yaml.safe_load(path.read_text())
    validate(snakemake_view, str(SCHEMA_PATH))
    assert load_config(path) == snakemake_view


def test_load_config_names_the_file_and_key_of_a_bad_value(tmp_path):
    path = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["train"]["seq_len"] = "long"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"bad.yaml: key 'train.seq_len'"):
        load_config(path)
