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


def test_a_duplicate_yaml_key_is_one_line_naming_file_key_and_line(tmp_path, capsys):
    from pipeline.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("sampling:\n  num_frames: 4\n  strategy: uniform\n  num_frames: 16\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: duplicate key 'num_frames' at line 4 \(first at line 2\)"):
        load_config(cfg)
    bench = tmp_path / "b.yaml"  # the benchmark config goes through the same loader
    bench.write_text("name: x\nstores: [{dataset: d, path: p}]\npoolings: [mean]\nheads: [{kind: logreg}]\nname: y\n")
    assert main(["benchmark", str(bench)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.yaml: duplicate key 'name' at line 5 (first at line 1)" in err
    with pytest.raises(ConfigError, match="override sampling: duplicate key 'a'"):
        load_config(None, ["sampling={a: 1, a: 2}"])
    # a merge key's values may be overridden: that is what << means
    assert load_config(None, ["sampling={<<: {num_frames: 4, strategy: fps}, num_frames: 8}"]).sampling.num_frames == 8
