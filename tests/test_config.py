import dataclasses

import pytest
import yaml

from qmdd.config import (
    ConfigError,
    carry_over,
    config_diff,
    QuantConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_keys,
    load_config,
    save_config,
)
from qmdd.detector import validate_config


def test_round_trip_through_yaml(tmp_path):
    config = config_from_dict(
        {
            "data": {"classes": ["car", "cat"], "blur_sigma": [0.5, 2.0], "root": "/x"},
            "model": {"arch": "mobilenet_v2"},
            "quant": {"bits": 3, "first_layer_bits": 8, "keep_full_precision": ["layer1.*"]},
            "train": {"lr": 3e-4, "epochs": 2},
        }
    )
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config


def test_defaults_round_trip():
    assert config_from_dict(config_to_dict(RunConfig())) == RunConfig()


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.ecpohs'.*did you mean 'epochs'"):
        config_from_dict({"train": {"ecpohs": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        config_from_dict({"trian": {}})


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_bits_is_value_error(bits):
    # The supported set is qmdd.quant's: checked where a config becomes a model (the CLI
    # calls validate_config), and by quantize() itself for Python callers.
    config = RunConfig(quant=QuantConfig(bits=bits))
    with pytest.raises(ConfigError, match=rf"quant.bits={bits} is not a supported bit width"):
        validate_config(config)
    from qmdd.quant import quantize
    from torch import nn

    with pytest.raises(ValueError, match=rf"quant.bits={bits} is not a supported bit width"):
        quantize(nn.Sequential(nn.Conv2d(3, 4, 3)), config.quant)


@pytest.mark.parametrize("bits", [0, -2, 33])
def test_impossible_bits_fail_in_the_config_itself(bits):
    with pytest.raises(ConfigError, match=rf"quant.bits={bits} is not a bit width"):
        QuantConfig(bits=bits)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="data.blur_prob"):
        config_from_dict({"data": {"blur_prob": 1.5}})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="model.arch='resnet19' is unknown.*did you mean 'resnet18'"):
        validate_config(config_from_dict({"model": {"arch": "resnet19"}}))
    with pytest.raises(ConfigError, match="quant.quantizer"):
        validate_config(config_from_dict({"quant": {"quantizer": "nope"}}))
    with pytest.raises(ConfigError, match="model.input_filter='np' is unknown.*did you mean 'npr'"):
        validate_config(config_from_dict({"model": {"input_filter": "np"}}))
    with pytest.raises(ConfigError, match="quant.block='cbq' is unknown.*did you mean 'cqb'"):
        validate_config(config_from_dict({"quant": {"block": "cbq"}}))


def test_overrides_parse_types_and_reject_unknown():
    config = apply_overrides(RunConfig(), ["quant.bits=2", "train.lr=1e-3", "data.classes=car,cat", "data.root=null"])
    assert config.quant.bits == 2 and config.train.lr == pytest.approx(1e-3)
    assert config.data.classes == ("car", "cat") and config.data.root is None
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        apply_overrides(RunConfig(), ["train.batchsize=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(RunConfig(), ["train.lr"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_is_frozen_and_tag():
    config = QuantConfig(bits=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 3  # type: ignore[misc]
    assert config.tag == "w2a2" and config.enabled
    assert QuantConfig().tag == "fp32" and not QuantConfig().enabled
    assert QuantConfig(bits=2, act_bits=4).tag == "w2a4"
    # An 8-bit first layer is not "fp32" (it is fake-quantized).
    assert QuantConfig(first_layer_bits=8).tag == "fp32-first8" and QuantConfig(first_layer_bits=8).enabled
    assert QuantConfig(bits=2, last_layer_bits=8).tag == "w2a2-last8"


def test_every_field_is_documented():
    text = describe_keys()
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory()):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help text"
            assert f"  {f.name} = " in text


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ should ship at least one recipe"
    for path in configs:
        load_config(path)


def test_building_a_config_imports_neither_torch_nor_the_registries():
    import subprocess
    import sys

    code = (
        "import sys; from qmdd.config import load_config, describe_keys; "
        "load_config(None, ['quant.bits=2', 'model.arch=whatever']); describe_keys(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'qmdd.models', 'qmdd.quant') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_config_diff_leaves_out_the_keys_a_continued_run_may_change():
    old = RunConfig()
    new = apply_overrides(old, ["train.epochs=40", "train.device=cpu", "train.lr=1e-3", "prune.levels=3", "data.num_workers=4"])
    assert config_diff(old, new) == [
        "data.num_workers: 0 -> 4", "train.epochs: 6 -> 40", "train.lr: 0.0002 -> 0.001", "train.device: 'auto' -> 'cpu'", "prune.levels: 8 -> 3",
    ]
    assert config_diff(old, new, allow={"free"}) == ["train.lr: 0.0002 -> 0.001", "prune.levels: 8 -> 3"]
    assert config_diff(old, new, allow={"free", "extend"}) == ["train.lr: 0.0002 -> 0.001"]
    assert config_diff(old, new, allow={"extend"}, sections=("prune", "model")) == []
    resumed = carry_over(old, new)
    assert (resumed.train.epochs, resumed.train.device, resumed.data.num_workers) == (40, "cpu", 4)
    assert resumed.train.lr == old.train.lr and resumed.prune.levels == old.prune.levels


def test_renamed_keys_of_older_checkpoints_still_load():
    config = config_from_dict({"train": {"early_stop_patience": 7, "early_stop_min_delta": 0.01}})
    assert (config.train.plateau_patience, config.train.min_val_gain) == (7, 0.01)
    assert "early_stop_patience" not in config_to_dict(config)["train"]
