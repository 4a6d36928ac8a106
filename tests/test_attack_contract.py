"""The one attack contract: every registered attack is an Attack with the same ``run``, and
its typed report serialises to the JSON the attacks have always written."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields

import pytest

from ppfr.attacks import (
    ATTACKS,
    Attack,
    AttackReport,
    IdentityRecoveryReport,
    InversionReport,
    LinkageReport,
    TemplateInversionReport,
    ViewingReport,
    list_attacks,
    register_attack,
)

CONTRACT = ["self", "model", "victims", "labels", "aux", "aux_labels", "seed", "judge"]


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_keeps_the_contract(name):
    cls = ATTACKS.get(name)
    assert isinstance(cls, type) and issubclass(cls, Attack) and cls.name == name
    params = inspect.signature(cls.run).parameters
    assert list(params)[: len(CONTRACT)] == CONTRACT
    for p in CONTRACT[4:]:  # aux, aux_labels, seed, judge: keyword-only, with defaults
        assert params[p].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[p].default is not inspect.Parameter.empty


def test_only_attacks_register():
    with pytest.raises(TypeError, match="not a subclass"):
        register_attack("not-an-attack")(dict)
    assert "not-an-attack" not in ATTACKS


IMAGE = {"ssim": 0.5, "psnr": 12.0, "leakage": 0.6, "rank1": 0.25}


def test_reports_serialise_in_the_published_order():
    v = ViewingReport(attack="viewing", method="minusface", n=4, seed=0, **IMAGE)
    assert list(v.to_dict()) == ["attack", "method", "n", "seed", *IMAGE]
    assert v["ssim"] == 0.5 and dict(v) == v.to_dict() and v.get("nope") is None
    inv = InversionReport(
        attack="recovery", method="minusface", n=4, aux=8, seed=1, **IMAGE,
        floor_ssim=0.3, floor_psnr=11.0, train_l1=0.1, fit_seconds=2.0,
        settings={"width": 8, "epochs": 1, "batch_size": 16},
    )  # fmt: skip
    assert list(inv.to_dict()) == [
        "attack", "method", "n", "aux", "seed", *IMAGE, "floor_ssim", "floor_psnr",
        "train_l1", "fit_seconds", "width", "epochs", "batch_size",
    ]  # fmt: skip
    guided = IdentityRecoveryReport(
        **{f.name: getattr(inv, f.name) for f in fields(inv)},
        train_pixel_l1=0.1, train_identity=0.2, recognizer="arcface",
    )  # fmt: skip
    assert list(guided.to_dict())[-3:] == ["train_pixel_l1", "train_identity", "recognizer"]
    t = TemplateInversionReport(
        attack="template-inversion", method="arcface", protected=True, n=4, seed=0, **IMAGE
    )
    assert "final_l1" not in t.to_dict()  # evaluate() alone has no training loss
    t.final_l1 = 0.2
    assert list(t.to_dict()) == [
        "attack", "method", "protected", "n", "seed", *IMAGE, "final_l1",
    ]  # fmt: skip
    # callers append after the run (ppfr attack adds the model and its first step's share)
    t.extra["model"] = "runs/x"
    assert list(t.to_dict())[-1] == "model" and json.loads(json.dumps(t.to_dict()))["n"] == 4
    assert isinstance(t, AttackReport)


def test_linkage_report_fields_match_its_order():
    names = {f.name for f in fields(LinkageReport)} - {"extra"}
    assert names == set(LinkageReport.ORDER)
