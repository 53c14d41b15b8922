import dataclasses

import pytest
import yaml

from qmdd.config import (
    ConfigError,
    QuantConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_keys,
    load_config,
    save_config,
)


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


@pytest.mark.parametrize("bits", [1, 5, 16, 0])
def test_unsupported_bits_is_value_error(bits):
    with pytest.raises(ValueError, match=rf"quant.bits={bits} is not a supported bit width"):
        QuantConfig(bits=bits)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="data.blur_prob"):
        config_from_dict({"data": {"blur_prob": 1.5}})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="model.arch='resnet19' is unknown.*did you mean 'resnet18'"):
        config_from_dict({"model": {"arch": "resnet19"}})
    with pytest.raises(ConfigError, match="quant.quantizer"):
        config_from_dict({"quant": {"quantizer": "nope"}})


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
