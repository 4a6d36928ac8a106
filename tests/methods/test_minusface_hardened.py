"""``minusface-hardened``: MinusFace with our hardening options, and the bundles saved while
those options were settings of ``minusface``.

The option tests came from tests/methods/test_minusface.py as they were, with the method's
name changed."""

import dataclasses

import pytest
import torch

import ppfr
from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._minusface_bundles import HARDENING_OFF, LAYOUT
from ppfr.methods.minusface import MinusFaceConfig, shuffle_channels
from tests.conftest import TINY_MINUSFACE


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("minusface-hardened", num_classes=4, **{**TINY_MINUSFACE, **extra}).eval()


def test_stage_one_pixel_loss_pulls_back_saturating_residues(faces):
    # a residue so large that d(x') saturates almost everywhere: the unclamped loss still has
    # the gradient that shrinks it; the clamped one (the default) is nearly flat there, which
    # is how stage 1 learns residue spikes (docs/privacy.md)
    grads = {}
    for clamp in (False, True):
        m = ppfr.create(
            "minusface-hardened",
            num_classes=4,
            **TINY_MINUSFACE,
            pixel_clamp=clamp,
            identity_weight=0.0,
        )
        bias = m.client.generator.out.bias
        with torch.no_grad():  # random signs: a constant would cancel at most pixels
            bias.normal_(0, 50.0, generator=torch.Generator().manual_seed(0))
        loss, logs = m.stages()[0].module(faces, torch.arange(len(faces)) % 4)
        loss.backward()
        grads[clamp] = float(bias.grad.norm())
    assert grads[False] > 1e-2
    assert grads[True] < 0.05 * grads[False]


def _strong_residue(m):
    """A residue well away from zero (untrained U-Nets start near it), so checks mean something."""
    g = m.client.generator
    with torch.no_grad():
        g.out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        g.out.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return m


def test_equalised_residue_has_one_rms_everywhere(faces):
    m = _strong_residue(_model(equalise=True, equalise_rms=20.0))
    with torch.no_grad():
        m.client.generator.out.bias.zero_()  # a constant would even out the energy itself
        m.client.generator.out.weight.mul_(20.0)
        # a residue whose energy varies by position by construction, whatever the random
        # weights give: each position's vector rescaled to an RMS that ramps from 0.1 to 40
        # across the columns (its direction is the generator's)
        r = m.residue(faces)
        rms0 = r.square().mean(1, keepdim=True).sqrt().clamp_min(1e-12)  # 0 stays 0
        r = r / rms0 * torch.linspace(0.1, 40.0, r.shape[-1])
        eq = m.client.equalised(r)
    rms = eq.square().mean(1).sqrt()
    raw = r.square().mean(1).sqrt()
    strong = raw > 2.0  # well above the floor (0.4 here)
    assert strong.float().mean() > 0.3 and raw[strong].std() > 0.2 * raw[strong].mean()
    # rms 20 where the residue is well above the floor 0.02 * 20, and 20 raw / |(raw, floor)|
    torch.testing.assert_close(rms, 20.0 * raw / (raw.square() + 0.4**2).sqrt(), rtol=1e-4, atol=0)
    assert ((rms[strong] - 20.0).abs() < 0.4).all()
    # the direction of every position's vector is kept
    cos = torch.nn.functional.cosine_similarity(eq, r, dim=1)
    assert (cos[strong] > 0.9999).all()


def test_equalised_composed_protect_agrees_with_the_plain_path(faces):
    m = _strong_residue(_model(equalise=True))
    with torch.no_grad():
        composed = m.protect(faces, generator=torch.Generator().manual_seed(4))
        m.client.composed = False
        plain = m.protect(faces, generator=torch.Generator().manual_seed(4))
        expected = freq.decode(
            shuffle_channels(m.client.equalised(m.residue(faces)), torch.Generator().manual_seed(4))
        )
    assert (composed - plain).abs().max() < 1e-5
    assert (plain - expected).abs().max() < 1e-6
    # equalising changes the picture: not the unequalised protect
    m.client.equalise = False
    with torch.no_grad():
        unequalised = m.protect(faces, generator=torch.Generator().manual_seed(4))
    assert (unequalised - plain).abs().max() > 0.05


def test_tile_grid_moves_whole_tiles_per_image(faces):
    tiled = _strong_residue(_model(tile_grid=2))
    plain = _strong_residue(_model())
    with torch.no_grad():
        a = tiled.protect(faces, generator=torch.Generator().manual_seed(9))
        b = plain.protect(faces, generator=torch.Generator().manual_seed(9))

    def tiles(p, i):
        return sorted(
            float(t.sum())
            for t in p[i].unfold(1, 56, 56).unfold(2, 56, 56).reshape(3, 4, -1).transpose(0, 1)
        )

    moved = 0
    for i in range(4):  # the same channel shuffle, the quadrants in another order
        assert tiles(a, i) == pytest.approx(tiles(b, i), rel=1e-6)
        moved += not torch.equal(a[i], b[i])
    assert moved >= 2  # fresh orders per image (1 in 24 keeps the layout)


@pytest.mark.parametrize(
    "option", [{"equalise": True}, {"tile_grid": 4}, {"stage1_reads": "protected"}]
)
def test_hardened_stage_one_trains(option, orl4, descend):
    torch.manual_seed(0)
    m = ppfr.create("minusface-hardened", num_classes=4, **TINY_MINUSFACE, **option)
    idx = torch.arange(0, 40, 3)
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    s1, s2 = m.stages()
    server = {id(p) for p in m.server.parameters()}
    trained = {id(p) for g in s1.param_groups for p in g["params"]}
    # stage1_reads="protected": stage 1 trains f_p itself, and stage 2 goes on with its head
    assert (server <= trained) == (option.get("stage1_reads") == "protected")
    if option.get("stage1_reads") == "protected":
        assert s2.module.head is s1.module.head and "recognizer" not in m.train_part
    before, after, logs = descend(s1, x, y)
    assert set(logs) == {"pixel", "id"} and after < before


def test_hardening_options_are_checked():
    with pytest.raises(InputError, match="tile_grid"):
        ppfr.create("minusface-hardened", tile_grid=5)
    with pytest.raises(InputError, match="equalise_rms"):
        ppfr.create("minusface-hardened", equalise=True, equalise_rms=0.0)
    with pytest.raises(InputError, match="stage1_reads"):
        ppfr.create("minusface-hardened", stage1_reads="face")


def test_stage_one_adversary_trains_against_the_generator(faces, monkeypatch):
    import ppfr.methods.minusface_hardened as mf

    def grads(reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        m = ppfr.create(
            "minusface-hardened",
            num_classes=4,
            **TINY_MINUSFACE,
            adversary_weight=1.0,
            adversary_width=4,
            pixel_weight=0.0,
            identity_weight=0.0,
        )
        _strong_residue(m)
        if not reverse:
            monkeypatch.setattr(mf, "reverse_gradient", lambda x: x)
        step = m.stages()[0].module
        assert step.adversary is m.train_part["adversary"]
        torch.manual_seed(1)  # the same shuffle both times
        loss, logs = step(faces, torch.arange(len(faces)) % 4)
        assert logs["adv"] == pytest.approx(float(loss.detach()))
        loss.backward()
        monkeypatch.undo()
        return m.client.generator.out.weight.grad.clone(), m.train_part[
            "adversary"
        ].out.weight.grad.clone()

    gen, adv = grads(reverse=True)
    gen_plain, adv_plain = grads(reverse=False)
    assert gen.abs().max() > 0
    # the generator climbs the adversary's loss, the adversary descends it
    torch.testing.assert_close(gen, -gen_plain)
    torch.testing.assert_close(adv, adv_plain)
    assert (
        "adversary"
        not in ppfr.create("minusface-hardened", num_classes=4, **TINY_MINUSFACE).train_part
    )
    # with n stacked shuffles the adversary reads all 3n maps, as the attacker would
    m = ppfr.create(
        "minusface-hardened", num_classes=4, **TINY_MINUSFACE, shuffles=2, adversary_weight=1.0,
        adversary_width=4,
    )  # fmt: skip
    loss, logs = m.stages()[0].module(faces, torch.arange(len(faces)) % 4)
    assert torch.isfinite(loss) and "adv" in logs


# ---------------------------------------------------------------- bundles from before the split
def _as_saved_before_the_split(bundle):
    """Rewrite a hardened bundle as the code before the split saved it: byte for byte the
    same files, but the manifest names the method "minusface"."""
    manifest = bundle / "ppfr.toml"
    text = manifest.read_text()
    assert text.count('method = "minusface-hardened"') == 1
    manifest.write_text(text.replace('method = "minusface-hardened"', 'method = "minusface"'))


def test_plain_minusface_holds_only_the_papers_settings():
    names = {f.name for f in dataclasses.fields(MinusFaceConfig)}
    assert not names & set(HARDENING_OFF)
    hardened = ppfr.create("minusface-hardened").config
    assert {k: getattr(hardened, k) for k in HARDENING_OFF} == HARDENING_OFF  # all off
    with pytest.raises(ppfr.errors.InputError, match="unknown minusface setting"):
        ppfr.create("minusface", equalise=True)


def test_bundles_keep_the_layout_from_before_the_split(tmp_path):
    plain = ppfr.create("minusface", **TINY_MINUSFACE)
    plain.save(tmp_path / "plain")
    config = ppfr.load(tmp_path / "plain").manifest["config"]
    # every setting, the hardening options at their off values, in the old order
    assert list(config) == list(LAYOUT)
    assert {k: config[k] for k in HARDENING_OFF} == HARDENING_OFF
    back = ppfr.load(tmp_path / "plain")
    assert back.name == "minusface" and back.config == plain.config
    # a hardened model with every option off is plain MinusFace: the same fingerprint
    torch.manual_seed(0)
    a = ppfr.create("minusface", **TINY_MINUSFACE)
    torch.manual_seed(0)
    b = ppfr.create("minusface-hardened", **TINY_MINUSFACE)
    assert a.fingerprint() == b.fingerprint() and a.fingerprint("server") == b.fingerprint("server")


@pytest.mark.parametrize(
    "options",
    [{"equalise": True, "equalise_stage1": False}, {"tile_grid": 4}, {"adversary_weight": 0.5}],
)
def test_old_minusface_bundles_with_options_load_as_hardened(options, faces, tmp_path):
    torch.manual_seed(0)
    m = ppfr.create("minusface-hardened", num_classes=4, **TINY_MINUSFACE, **options).eval()
    m.save(tmp_path / "b", parts=["client", "server", "train"])
    _as_saved_before_the_split(tmp_path / "b")
    back = ppfr.load(tmp_path / "b")
    assert back.name == "minusface-hardened" and back.config == m.config
    # the fingerprints the old manifest holds still name the model
    assert back.fingerprint() == back.manifest["client_fingerprint"] == m.fingerprint()
    with torch.no_grad():
        want = m.protect(faces, generator=torch.Generator().manual_seed(3))
        got = back.protect(faces, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, want)


def test_hardened_bundle_round_trip(tmp_path):
    m = ppfr.create("minusface-hardened", **TINY_MINUSFACE, tile_grid=2)
    m.save(tmp_path / "b")
    back = ppfr.load(tmp_path / "b")
    assert back.manifest["method"] == "minusface-hardened"
    assert back.name == "minusface-hardened" and back.config.tile_grid == 2
