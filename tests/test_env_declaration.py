"""How a task env is declared (:class:`jaxmed.envs.base.ConfiguredEnv` class keywords): the class
attributes they set, the bank-label check and ``required_labels`` the base derives from
``label_field``, and a half-declared label field refused at class creation."""

from __future__ import annotations

import dataclasses

import pytest

from jaxmed.envs.base import ConfiguredEnv
from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
from jaxmed.envs.registration import RegistrationConfig, RegistrationEnv
from jaxmed.errors import LandmarkError

BANK_LABELS = ("AC", "PC", "LMB")


@pytest.mark.parametrize(
    "env_class, config, role, wanted",
    [
        (LandmarkEnv, LandmarkConfig(targets=("AC", "PC", "AC")), "target", ("AC", "PC")),
        (RegistrationEnv, RegistrationConfig(landmarks=("AC", "PC", "LMB")), "TRE", ("AC", "PC", "LMB")),
        (GoalLandmarkEnv, GoalLandmarkConfig(goals=("PC", "AC")), "goal", ("PC", "AC")),
    ],
)
def test_label_field_gives_required_labels_and_the_check(env_class, config, role, wanted):
    env = env_class(config, labels=BANK_LABELS)
    assert env.required_labels == wanted  # each label once, in config order
    assert env.labels == BANK_LABELS
    missing = tuple(lab for lab in BANK_LABELS if lab not in wanted) or ("XX",)
    with pytest.raises(LandmarkError, match=rf"{env.name}: unknown {role} landmark\(s\)"):
        env_class(config, labels=missing)


def test_class_keywords_set_the_attributes_and_are_inherited():
    assert (LandmarkEnv.config_class, LandmarkEnv.params_class, LandmarkEnv.default_name) == (LandmarkConfig, LandmarkParams, "landmark")
    assert (LandmarkEnv.label_field, LandmarkEnv.label_role) == ("targets", "target")

    class Renamed(LandmarkEnv, name="renamed"):
        pass

    assert (Renamed.config_class, Renamed.label_field, Renamed.default_name) == (LandmarkConfig, "targets", "renamed")
    assert Renamed().name == "renamed" and Renamed(name="x").name == "x"


def test_env_without_label_field_reads_no_labels():
    @dataclasses.dataclass(frozen=True)
    class NoLabelsConfig:
        crop_size: int = 5

    class NoLabels(ConfiguredEnv, config=NoLabelsConfig, params=LandmarkParams, name="no-labels"):
        pass

    env = NoLabels(labels=())  # nothing to find in an empty bank
    assert env.required_labels == () and env.name == "no-labels"


def test_label_field_without_role_is_refused():
    with pytest.raises(TypeError, match="label_field and label_role go together"):
        class Half(ConfiguredEnv, label_field="targets"):  # noqa: F841
            pass
