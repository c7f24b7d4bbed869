"""Training configuration files, overrides and the `vla-align train` command's errors."""
import pytest

from vla_align.cli import main
from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.paths import share_path
from vla_align.train.config import TrainConfig, parse_overrides

DEFAULT = share_path('config', 'train_default.yaml')


def test_default_training_config_loads_the_default_model():
    config = TrainConfig.from_file(DEFAULT)
    assert config.model == PolicyConfig()
    assert config.optim.max_minutes == 40


def test_default_training_splits_are_the_suites_training_splits():
    """Training never reads an evaluation split's episodes: exactly the splits with train seeds."""
    from vla_align.sim.suite import load_suite

    suite = load_suite()
    with_train_seeds = tuple(n for n in suite.splits if 'train' in suite.split(n).seeds)
    assert TrainConfig.from_file(DEFAULT).data.splits == with_train_seeds == ('seen', 'cluttered')
    assert TrainConfig().data.splits == with_train_seeds


def test_overrides_reach_every_section():
    overrides = parse_overrides(['optim.lr=1e-3', 'model.d_model=64', 'model.fusion_heads=4',
                                 'data.splits=[seen, shift]', 'seed=7'])
    config = TrainConfig.from_file(DEFAULT, overrides)
    assert config.optim.lr == pytest.approx(1e-3) and config.model.d_model == 64
    assert config.data.splits == ('seen', 'shift') and config.seed == 7


@pytest.mark.parametrize('override, message', [
    ('optim.learning_rate=1', 'unknown optim keys'),
    ('model.d_model=30', 'multiple of fusion_heads'),
    ('optim.batch_size=1', 'batch_size'),
    ('colour=red', 'unknown train config keys'),
])
def test_bad_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_file(DEFAULT, parse_overrides([override]))


def test_inline_model_mapping(tmp_path):
    path = tmp_path / 'train.yaml'
    path.write_text('model: {d_model: 64, fusion_heads: 2}\noptim: {max_steps: 5}\n')
    config = TrainConfig.from_file(path)
    assert config.model.d_model == 64 and config.optim.max_steps == 5


def test_train_command_reports_missing_data_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')  # the command sets it; keep it test-local
    code = main(['train', '--data', str(tmp_path / 'missing'), '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert code == 2 and 'error:' in err and 'missing' in err and 'Traceback' not in err
