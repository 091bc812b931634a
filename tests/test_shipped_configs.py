"""Every TOML shipped in launch/configs/ against the root config tree (launch/config.py).

Every section is one the root `Config` composes (each recipe's from its torch-free config module): a
shipped file loads with no unknown key and round-trips through the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from fusionrec.configtree import to_dict
from fusionrec.launch.config import CONFIG_DIR, Config, ConfigError, load_config, recipes, write_resolved

pytestmark = pytest.mark.unit

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
# Root fields (the `recipes` bucket is written as one top-level table per recipe) + every recipe's section.
ROOT_SECTIONS = {f.name for f in dataclasses.fields(Config) if f.name != "recipes"} | set(recipes())

# Section -> the dataclass of the module that owns it (docs/ARCHITECTURE.md: each package owns its section).
# Values the configs' header comments say to give on the command line (validated as required).
CLI_REQUIRED = {"palr": ["palr.data_dir=processed/beauty"], "dmpo": ["dmpo.sft_file=rec_sft.json"]}


def raw_toml(name: str) -> dict:
    return tomllib.loads((CONFIG_DIR / f"{name}.toml").read_text(encoding="utf-8"))


def required_overrides(data: dict) -> list[str]:
    return [o for section in data for o in CLI_REQUIRED.get(section, [])]


def load_wired_part(name: str, tmp_path: Path) -> Config:
    """The config without its not-yet-wired sections, loaded the way the CLI loads a file."""
    data = raw_toml(name)
    wired = dict(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.wired.toml"
    path.write_text(tomli_w.dumps(wired), encoding="utf-8")
    return load_config(path, required_overrides(wired))


def test_the_shipped_configs_are_all_seen():
    assert len(SHIPPED) >= 9 and "fusion_paper" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_section_is_known_to_the_root_tree(name):
    unlisted = sorted(set(raw_toml(name)) - ROOT_SECTIONS)
    assert not unlisted, (
        f"{name}.toml has top-level sections {unlisted} that launch/config.py's Config does not know "
        f"(known: {sorted(ROOT_SECTIONS)})"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_whole_config_loads_through_the_root_tree(name):
    cfg = load_config(name, required_overrides(raw_toml(name)))
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("name", SHIPPED)
def test_wired_sections_have_no_unknown_keys(name, tmp_path):
    # The root tree rejects any unknown key inside a known section with its dotted path.
    cfg = load_wired_part(name, tmp_path)
    assert to_dict(cfg)  # non-empty resolved tree


@pytest.mark.parametrize("name", SHIPPED)
def test_resolved_config_round_trips_to_an_equal_config(name, tmp_path):
    cfg = load_wired_part(name, tmp_path / "src")
    path = write_resolved(cfg, tmp_path)
    assert load_config(path) == cfg
    assert json.loads((tmp_path / "config.json").read_text()) == to_dict(cfg)
    # And once more: the resolved file is a fixed point (nothing is lost or added by a second pass).
    again = write_resolved(load_config(path), tmp_path / "again")
    assert Path(again).read_text() == path.read_text()


def test_a_typo_inside_a_known_section_is_rejected_with_its_dotted_path(tmp_path):
    text = (CONFIG_DIR / "fusion_paper.toml").read_text(encoding="utf-8")
    broken = tmp_path / "typo.toml"
    broken.write_text(text.replace("[data.shards]\n", "[data.shards]\ntarget_mbb = 8.0\n", 1))
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.shards\.target_mbb'"):
        load_config(broken)
    broken.write_text(text.replace("[data]\n", "[data]\nkcroe = 5\n", 1))
    with pytest.raises(ConfigError, match=r"'data\.kcroe' \(did you mean 'data\.kcore'\?\)"):
        load_config(broken)


def test_fusion_paper_config_datasets_are_the_pretrain_and_zeroshot_lists():
    cfg = load_config("fusion_paper")
    names = {d.name for d in cfg.data.datasets}
    assert names == set(cfg.data.fusion.pretrain) | set(cfg.data.fusion.zeroshot)
    assert (len(cfg.data.fusion.pretrain), len(cfg.data.fusion.zeroshot)) == (19, 6)
    assert cfg.data.fusion.user_cap == 30000
