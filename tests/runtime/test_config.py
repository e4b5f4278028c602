"""Wrong config values fail at start, naming the field and the allowed values."""

import pytest

from tandem.core.errors import ConfigError
from tandem.hardware.metaworld_robot import MetaWorldRobotConfig
from tandem.runtime.config import compose_run


def test_defaults_compose():
    cfg = compose_run(["policy=scripted"])
    assert isinstance(cfg.robot, MetaWorldRobotConfig)
    assert cfg.session.episodes >= 1


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("robot.task=pick-plcae-v3", "robot.task", "did you mean 'pick-place-v3'"),
        ("robot.fps=-5", "robot.fps", "must be > 0"),
        ("robot.image_size=0", "robot.image_size", "must be in [8, 1024]"),
        ("robot.cameras=[nosuchcam]", "robot.cameras", "one of"),
        ("session.horizon=0", "session.horizon", "must be in"),
        ("session.record_stride=3", "session.record_stride", "a divisor of session.horizon (10)"),
        ("session.record_stride=11", "session.record_stride", "must be in [0, 10]"),
        ("session.head_stride=4", "session.head_stride", "a divisor of session.horizon (10)"),
        ("safety.watchdog_s=-1", "safety.watchdog_s", "must be > 0"),
        ("session.backend=gpu", "session.backend", "one of"),
    ],
)
def test_bad_values_name_field_and_allowed(override, field, allowed):
    with pytest.raises(ConfigError) as info:
        compose_run(["policy=scripted", override])
    msg = str(info.value)
    assert field in msg and allowed in msg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="taks"):
        compose_run(["policy=scripted", "+robot.taks=reach-v3"])


def test_unknown_group_option_is_named():
    with pytest.raises(ConfigError, match="robot"):
        compose_run(["robot=nosuchrobot"])
