"""What a newcomer meets writing a YAML of their own: a part picked by its ``name`` without switching its config group,
and the default metric callbacks on data that cannot feed them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import error_line

CIFAR = "defaults:\n  - base\n  - override /data: cifar10\n  - override /encoder: resnet18\n  - _self_\n"


def own_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def printed_config(run_cli, *argv: str) -> dict:
    code, out, err = run_cli("fit", "--config", *argv, "--print-config")
    assert code == 0, err
    return yaml.safe_load(out)


# ------------------------------------------------------------------------------- a part picked by its name


@pytest.mark.parametrize("section, name, group_key", [
    ("data", "invertible_mlp", "n"),
    ("encoder", "mlp", "width"),
    ("method", "byol", "temperature"),
    ("optim", "adamw", "momentum"),
])
def test_a_part_named_in_an_own_yaml_brings_its_group(run_cli, tmp_path, section, name, group_key):
    """``SECTION.name: NAME`` under ``defaults: [base, _self_]`` works as ``- override /SECTION: NAME``: the keys of
    base's default group option, which the named part does not have, are gone, and NAME's group file fills the rest."""
    path = own_yaml(tmp_path, f"defaults: [base, _self_]\n{section}:\n  name: {name}\n")
    cfg = printed_config(run_cli, path)
    group_file = yaml.safe_load((Path(__file__).parents[1] / "configs" / section / f"{name}.yaml").read_text())
    assert cfg[section]["name"] == name
    assert group_key not in cfg[section]
    assert {key: cfg[section][key] for key in group_file if key != "defaults"} == group_file


def test_the_keys_written_beside_the_name_stay(run_cli, tmp_path):
    path = own_yaml(tmp_path, "defaults: [base, _self_]\ndata:\n  name: invertible_mlp\n  d: 5\n  batch_size: 64\n")
    data = printed_config(run_cli, path)["data"]
    assert (data["name"], data["d"], data["batch_size"], data["space"]) == ("invertible_mlp", 5, 64, "box")


def test_a_name_on_the_command_line_brings_its_group(run_cli, tmp_path):
    path = own_yaml(tmp_path, "defaults: [base, _self_]\n")
    assert printed_config(run_cli, path, "data.name=invertible_mlp")["data"]["d"] == 10


def test_a_name_that_contradicts_the_chosen_group_teaches_the_override(run_cli, tmp_path):
    path = own_yaml(tmp_path, "defaults:\n  - base\n  - override /data: sparse_coding\n  - _self_\n"
                              "data:\n  name: invertible_mlp\n")
    code, out, err = run_cli("fit", "--config", path, "--print-config")
    assert error_line(code, err, out) == (
        "data.name=invertible_mlp keeps data.n, data.p, data.sparsity, data.latent, data.sampler, data.dictionary, "
        "data.noise_std, data.augmentation, data.mask_prob, data.drop_last from the default group data=sparse_coding, which "
        "data=invertible_mlp does not have; a part is switched in the defaults list with `- override /data: "
        "invertible_mlp` (or data=invertible_mlp on the command line), not by its name")


def test_a_name_that_several_group_options_share_lists_them(run_cli, tmp_path):
    path = own_yaml(tmp_path, "defaults: [base, _self_]\nencoder:\n  name: sparse\n")
    code, out, err = run_cli("fit", "--config", path, "encoder=mlp", "--print-config")
    assert error_line(code, err, out) == (
        "encoder.name=sparse keeps encoder.widths, encoder.relative_widths, encoder.output_dim, "
        "encoder.negative_slope, encoder.output from the group encoder=mlp, which encoder.name=sparse does not have; "
        "a part is switched in the defaults list with `- override /encoder: OPTION` (or encoder=OPTION on the command "
        "line), not by its name; OPTION is one of: basic, basic_2l, basic_official, linear, simplified")


def test_a_name_against_the_group_chosen_on_the_command_line_is_refused(run_cli, tmp_path):
    path = own_yaml(tmp_path, "defaults: [base, _self_]\n")
    code, out, err = run_cli("fit", "--config", path, "data=sparse_coding", "data.name=invertible_mlp",
                             "--print-config")
    line = error_line(code, err, out)
    assert line.startswith("data.name=invertible_mlp keeps data.n, "), line
    assert "from the default group data=sparse_coding" in line and "`- override /data: invertible_mlp`" in line


# ------------------------------------------------------------------- default callbacks follow the data


def test_default_callbacks_leave_out_what_the_data_cannot_feed(run_cli, tmp_path):
    callbacks = printed_config(run_cli, own_yaml(tmp_path, CIFAR))["callbacks"]
    assert set(callbacks) == {"spectrum", "readout"}
    path = own_yaml(tmp_path, "defaults:\n  - base\n  - override /data: invertible_mlp\n  - override /encoder: mlp\n"
                              "  - _self_\n")
    assert set(printed_config(run_cli, path)["callbacks"]) == {"spectrum", "readout"}


def test_default_callbacks_stay_where_the_data_feeds_them(run_cli):
    assert set(printed_config(run_cli, "quickstart")["callbacks"]) == {"max_cosine", "spectrum", "readout"}


REFUSED = ("callbacks.max_cosine needs a ground-truth dictionary (e.g. data.name=sparse_coding), which "
           "data.name=cifar10 with encoder.name=resnet18 does not provide; remove it with ~callbacks.max_cosine")


@pytest.mark.parametrize("section, overrides", [
    ("callbacks:\n  max_cosine: {}\n", ()),
    ("callbacks:\n  max_cosine:\n    signed: false\n", ()),
    ("", ("callbacks.max_cosine.signed=true",)),
    ("", ("callbacks=default",)),
], ids=["yaml-section", "yaml-section-same-values", "key-override", "group-on-command-line"])
def test_a_callback_asked_for_that_cannot_work_is_refused(run_cli, tmp_path, section, overrides):
    path = own_yaml(tmp_path, CIFAR + section)
    code, out, err = run_cli("fit", "--config", path, *overrides, "--print-config")
    assert error_line(code, err, out) == REFUSED


def test_the_default_group_named_in_an_own_defaults_list_is_asked_for(run_cli, tmp_path):
    path = own_yaml(tmp_path, CIFAR.replace("  - _self_", "  - override /callbacks: default\n  - _self_"))
    code, out, err = run_cli("fit", "--config", path, "--print-config")
    assert error_line(code, err, out) == REFUSED
