"""Config → run table: every ablation (named overrides and grid cells) with the cache key of each stage.

A stage's key is a short hash of the config sections it and its upstream stages read, so two
ablations that differ only in `quant` share docs, tokenizer, shards and trained models, and a change
to `eval` re-keys only eval. Snakemake's wildcards are these keys; `RunTable.params` maps a key back
to the parameters the stage's script receives.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from pgolf.consistency import batch_split_errors, model_shape_errors
from pgolf.external import config_errors as external_config_errors

# Which config sections each stage depends on, its own last. Order matters only for readability.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "docs": ("docs",),
    "tokenizer": ("docs", "tokenizer"),
    "shards": ("docs", "tokenizer", "shards"),
    # `abort` rules decide where a run stops, so they key the trained model too
    "train": ("docs", "tokenizer", "shards", "abort", "train"),
    "quant": ("docs", "tokenizer", "shards", "abort", "train", "quant"),
    "compress": ("docs", "tokenizer", "shards", "abort", "train", "quant", "compress"),
    "eval": ("docs", "tokenizer", "shards", "abort", "train", "quant", "compress", "eval"),
    # the unquantized EMA model scored with the same eval settings: the quantization gap
    "prequant": ("docs", "tokenizer", "shards", "abort", "train", "eval"),
    # an external training script (pgolf.external): trains, quantizes and scores itself; `train` gives
    # its GPU count and wall clock
    "external": ("docs", "tokenizer", "shards", "train", "external"),
}
# The stages an ablation runs: pgolf's own stack, or an external script on the same data.
PGOLF_STAGES = ("docs", "tokenizer", "shards", "train", "quant", "compress", "eval", "prequant")
EXTERNAL_STAGES = ("docs", "tokenizer", "shards", "external")
# Every config section an ablation may override.
OVERRIDABLE_SECTIONS = tuple(dict.fromkeys(s for sections in STAGE_SECTIONS.values() for s in sections))
KEY_HEX_CHARS = 10
# The one home of every key's default (`default:`); Snakemake's validate fills them into the config.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
# The Snakemake wildcard that carries each stage's key in rules/common.smk's path templates.
KEY_WILDCARD: dict[str, str] = {"docs": "docs_key", "tokenizer": "tok_key", "shards": "shards_key",
                                "train": "train_key", "quant": "quant_key", "compress": "compress_key",
                                "eval": "eval_key", "prequant": "prequant_key",
                                "external": "external_key"}


def stage_key(cfg: dict, stage: str) -> str:
    """Short sha256 of the canonical JSON of the sections `stage` depends on."""
    slice_ = {section: cfg[section] for section in STAGE_SECTIONS[stage]}
    canonical = json.dumps(slice_, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_HEX_CHARS]


def apply_overrides(base: dict, overrides: dict, ablation: str) -> dict:
    """Return a copy of `base` with dotted overrides (`train.mlp_mult: 3`) applied; unknown keys fail."""
    cfg = copy.deepcopy(base)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in OVERRIDABLE_SECTIONS or not key:
            raise ValueError(f"ablation {ablation!r}: override key {dotted!r} must be <section>.<key> "
                             f"with section one of {list(OVERRIDABLE_SECTIONS)}")
        if key not in cfg[section]:
            raise ValueError(f"ablation {ablation!r}: unknown key {dotted!r} "
                             f"(known: {', '.join(sorted(cfg[section]))})")
        cfg[section][key] = value
    return cfg


def expand_ablations(cfg: dict) -> dict[str, dict]:
    """Named ablations plus one per grid cell, e.g. grid `wide` → `wide__model_dim=96__bits=5`."""
    ablations = {name: dict(overrides or {}) for name, overrides in cfg["ablations"].items()}
    for grid_name, axes in (cfg.get("grids") or {}).items():
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            cell = "__".join(f"{k.partition('.')[2]}={v}" for k, v in zip(keys, values))
            name = f"{grid_name}__{cell}"
            if name in ablations:
                raise ValueError(f"grid {grid_name!r}: ablation name {name!r} is already taken")
            ablations[name] = dict(zip(keys, values))
    return ablations


def select_ablations(ablations: dict[str, dict], only: list[str] | None) -> dict[str, dict]:
    """Keep the ablations named in the config's `only` (all when it is null), baseline included."""
    if only is None:
        return ablations
    unknown = [name for name in only if name not in ablations]
    if unknown:
        raise ValueError(f"config key 'only': no ablation named {', '.join(map(repr, unknown))} "
                         f"(have: {', '.join(ablations)})")
    return {name: overrides for name, overrides in ablations.items() if name in only}


@dataclass
class Ablation:
    name: str
    cfg: dict
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        """True when an external training script (config `external.script`) replaces pgolf's stack."""
        return bool((self.cfg.get("external") or {}).get("script"))

    @property
    def stages(self) -> tuple[str, ...]:
        return EXTERNAL_STAGES if self.external else PGOLF_STAGES


class RunTable:
    """All ablations of a config, their resolved configs and stage keys, and key → params lookups."""

    def __init__(self, cfg: dict, schema: dict | None = None):
        seeds = cfg["seeds"]
        self.seeds: list[int] = [seeds] if isinstance(seeds, int) else list(seeds)
        self.baseline: str = cfg["baseline"]
        self.ablations: dict[str, Ablation] = {}
        self._by_key: dict[str, dict[str, Ablation]] = {stage: {} for stage in STAGE_SECTIONS}
        for name, overrides in select_ablations(expand_ablations(cfg), cfg.get("only")).items():
            resolved = apply_overrides(cfg, overrides, name)
            if schema is not None:
                validate_config(resolved, schema, where=f"ablation {name!r}")
            check_consistency(resolved, where=f"ablation {name!r}")
            ablation = Ablation(name, resolved)
            ablation.keys = {s: stage_key(resolved, s) for s in ablation.stages}
            self.ablations[name] = ablation
            for stage, key in ablation.keys.items():
                self._by_key[stage].setdefault(key, ablation)
        if self.baseline not in self.ablations:
            raise ValueError(f"config key 'baseline': {self.baseline!r} is not an ablation "
                             f"(have: {', '.join(self.ablations)})")

    def ablation_for(self, stage: str, key: str) -> Ablation:
        try:
            return self._by_key[stage][key]
        except KeyError:
            raise KeyError(f"no ablation has {stage} key {key!r}; is results/ from another config?") from None

    def params(self, stage: str, key: str) -> dict:
        """The config section a stage's script reads (its own section, overrides applied)."""
        section = STAGE_SECTIONS[stage][-1]
        return self.ablation_for(stage, key).cfg[section]

    def upstream_key(self, stage: str, key: str, upstream: str) -> str:
        return self.ablation_for(stage, key).keys[upstream]


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text())


def section_defaults(section: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The schema's `default:` of every key of one config section: what validation fills in. For code
    that calls a stage directly (tests, bench/) with a partial section."""
    properties = load_schema(schema_path)["properties"][section]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def _filling_validator():
    """Draft 2020-12 validation that first fills each missing property's `default:` (a copy), then checks
    it, as snakemake.utils.validate does for the workflow's config."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, spec in properties.items():
                if "default" in spec:
                    instance.setdefault(name, copy.deepcopy(spec["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": fill_then_check})


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """A config file as the workflow sees it: validated, every schema `default:` filled in. Needs only
    jsonschema, so bench/ runs where Snakemake is not installed."""
    cfg = yaml.safe_load(Path(path).read_text())
    _raise_first_error(_filling_validator()(load_schema(schema_path)).iter_errors(cfg), str(path))
    return cfg


def validate_config(cfg: dict, schema: dict, where: str = "config") -> None:
    """jsonschema validation with an error that names the offending key path."""
    _raise_first_error(jsonschema.Draft202012Validator(schema).iter_errors(cfg), where)


def _raise_first_error(errors, where: str) -> None:
    errors = sorted(errors, key=lambda e: list(e.path))
    if errors:
        key = ".".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise ValueError(f"{where}: key {key!r}: {errors[0].message}{_yaml_number_hint(errors[0])}")


def _yaml_number_hint(error) -> str:
    """YAML 1.1 (PyYAML, Snakemake) reads a float only with a dot and a signed exponent: 1e-4 is text."""
    if error.validator != "type" or not isinstance(error.instance, str):
        return ""
    try:
        value = float(error.instance)
    except ValueError:
        return ""
    if not math.isfinite(value):
        return ""
    mantissa, _, exponent = repr(value).partition("e")  # repr signs its exponent: 1e-05, 1e+16
    written = mantissa + ("" if "." in mantissa else ".0") + (f"e{exponent}" if exponent else "")
    return f" (YAML reads {error.instance} as text: write {written})"


def config_errors(cfg: dict) -> list[str]:
    """Every cross-key rule of a whole (defaults-filled) config."""
    docs, train, evaluation = cfg["docs"], cfg["train"], cfg["eval"]
    errors = []
    if docs["num_val_docs"] >= docs["num_docs"]:
        errors.append("docs.num_val_docs must be below docs.num_docs")
    errors += model_shape_errors(train["model_dim"], train["num_heads"], train["num_kv_heads"], train["num_layers"],
                                 train["rope_dims"], train["loop_layers"])
    errors += batch_split_errors(train["batch_tokens"], train["seq_len"], train["nproc"], train["grad_accum_steps"])
    if evaluation["stride"] > evaluation["seq_len"]:
        errors.append("eval.stride must not exceed eval.seq_len")
    if cfg.get("external"):
        errors += external_config_errors(cfg["external"])
    return errors


def check_consistency(cfg: dict, where: str = "config") -> None:
    """Cross-key rules a JSON schema cannot express (pgolf.consistency); the error names the keys involved."""
    errors = config_errors(cfg)
    if errors:
        raise ValueError(f"{where}: {errors[0]}")
