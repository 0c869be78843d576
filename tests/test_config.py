import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("encoder: openclip:ViT-B-32\nsampling:\n  num_frames: 4\nextract:\n  batch_size: 8\n")
    cfg = load_config(cfg_file, ["sampling.num_frames=16", "extract.device=cpu"])
    assert cfg.encoder == "openclip:ViT-B-32"
    assert cfg.sampling.num_frames == 16
    assert cfg.extract.batch_size == 8
    assert cfg.extract.device == "cpu"


def test_shipped_default_config_matches_code_defaults():
    from pathlib import Path

    assert load_config(Path(__file__).parents[1] / "configs" / "default.yaml").to_dict() == load_config().to_dict()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sampling.num_frame=3", "sampling.num_frame"),
        ("bogus=1", "bogus"),
        ("sampling.num_frames=abc", "sampling.num_frames"),
        ("sampling.strategy=random", "sampling.strategy"),
        ("extract.batch_size=0", "extract.batch_size"),
        ("noequals", "key=value"),
    ],
)
def test_bad_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unreadable_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
