"""Registry names follow one convention (lower case, hyphens) and the old spellings still load.

Configuration files written before the naming pass used ``"sign_flip"``-style attack kinds and
SecureSum's ``clip`` field (a per-coordinate quantization range, now ``value_range``); both load.
"""

from __future__ import annotations

import pytest

import attacks  # noqa: F401  (registers the attack kinds)
from attacks.base import UpdateAttack
from attacks.data_poisoning import DataAttack
from secagg.aggregation import Aggregator, SecureSum
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Adversary
from secagg.fedavg.trainer import ClientTrainer


@pytest.mark.parametrize("family", [Aggregator, UpdateAttack, DataAttack, Adversary, ClientTrainer])
def test_every_registered_kind_is_lower_case_with_hyphens(family):
    for kind in family.kinds():
        assert kind == kind.lower() and "_" not in kind and " " not in kind, kind


@pytest.mark.parametrize("old,new", [("sign_flip", "sign-flip"), ("min_max", "min-max"),
                                     ("alie_adaptive", "alie-adaptive"),
                                     ("model_replacement", "model-replacement")])
def test_old_underscore_attack_kinds_still_load(old, new):
    assert UpdateAttack.from_dict({"kind": old}) == UpdateAttack.from_dict({"kind": new})
    assert UpdateAttack.from_dict({"kind": old}).kind == new


def test_label_flip_old_spelling_loads():
    assert DataAttack.from_dict({"kind": "label_flip"}).kind == "label-flip"


def test_secure_sums_old_clip_field_loads_as_value_range():
    rule = Aggregator.from_dict({"kind": "secure-sum", "clip": 3.0, "bits": 24})
    assert rule == SecureSum(value_range=3.0, bits=24)
    assert "clip" not in rule.to_dict() and rule.to_dict()["value_range"] == 3.0
    with pytest.raises(ConfigError, match="both 'clip' \\(the old name\\) and 'value_range' given"):
        Aggregator.from_dict({"kind": "secure-sum", "clip": 3.0, "value_range": 2.0})


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"aggregator\.kind: unknown 'trimmed_meen'; known: .*trimmed-mean"):
        Aggregator.from_dict({"kind": "trimmed_meen"})


def test_a_new_kind_with_an_underscore_is_refused_at_registration():
    with pytest.raises(ConfigError, match="kinds are lower case with hyphens"):
        class Bad(UpdateAttack, kind="bad_name"):
            pass
