"""MetaWorld scene splits: fresh object/goal positions per seed, train and unseen never share a scene."""

import numpy as np
import pytest

from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig


@pytest.fixture(scope="module")
def robots():
    made = {s: MetaWorldRobot(MetaWorldRobotConfig(task="push-v3", cameras=[], realtime=False, scenes=s))
            for s in ("train", "unseen", "mt1")}
    for r in made.values():
        r.connect()
    yield made
    for r in made.values():
        r.disconnect()


def scenes(robot, seeds):
    out = []
    for s in seeds:
        robot.reset(s)
        out.append(np.array(robot.scene["positions"]))
    return np.stack(out)


def test_a_seed_always_gives_the_same_scene_and_records_it(robots):
    r = robots["train"]
    first = scenes(r, [3, 4, 3])
    assert np.array_equal(first[0], first[2]) and not np.array_equal(first[0], first[1])
    r.reset(3)
    assert r.scene["split"] == "train" and r.scene["seed"] == 3 and r.scene["task"] == "push-v3"
    assert np.allclose(r.get_observation()["observation.state"][4:7], first[0][:3], atol=1e-3)  # the object is there


def test_train_and_unseen_scenes_are_disjoint_and_cover_more_than_mt1(robots):
    train, unseen = scenes(robots["train"], range(60)), scenes(robots["unseen"], range(60))
    gaps = np.linalg.norm(train[:, None, :] - unseen[None, :, :], axis=-1)
    assert gaps.min() > 1e-4  # no unseen scene is a train scene, seed for seed or across seeds
    mt1 = scenes(robots["mt1"], range(60))
    assert len(np.unique(mt1.round(6), axis=0)) <= 50  # MT1 repeats its 50 variations
    assert len(np.unique(train.round(6), axis=0)) == 60


def test_the_split_is_validated():
    from tandem.core.errors import ConfigError

    with pytest.raises(ConfigError, match="robot.scenes"):
        MetaWorldRobotConfig(scenes="test")
