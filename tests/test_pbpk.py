"""Whole-body PBPK: physiology tables, Rodgers-Rowland Kp, conservation and analytic oracles."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd_jax.dosing import Regimen
from pkpd_jax.models import PK_MODELS, get_model, get_pk, list_models
from pkpd_jax.models.coupling import PKPDModel
from pkpd_jax.pbpk import (
    IV_CMT,
    ORAL_CMT,
    PORTAL,
    SPECIES,
    STATES,
    SYSTEMIC,
    TISSUE_COMPOSITION,
    TISSUES,
    Drug,
    WholeBodyPBPK,
    WholeBodyPBPKMassBalance,
    blood_plasma_ratio,
    clearance_analytic,
    hepatic_extraction,
    oral_bioavailability,
    partition_coefficients,
    pbpk_params,
    physiology,
    vss_analytic,
    vss_textbook,
)
from pkpd_jax.pbpk.partition import _BC
from pkpd_jax.solve import SolverConfig, simulate, simulate_population


MODEL = get_model("pbpk_whole_body")
MB = PKPDModel(WholeBodyPBPKMassBalance())
NEUTRAL = Drug(logp=2.5, fu=0.15, clint=150.0, ka=1.5, fa=0.8, name="neutral")
BASE = Drug(logp=3.0, fu=0.1, kind="base", pka=9.2, bp=1.3, clint=30.0, name="base")
ACID = Drug(logp=1.2, fu=0.02, kind="acid", pka=4.0, clint=1.0, name="acid")
# Geometric grid for AUCs: the blood pools equilibrate within minutes, adipose over days.
T_AUC = np.concatenate([[0.0], np.geomspace(1e-5, 2000.0, 1000)])


# One compiled simulator per (model, shapes): every regimen is padded to 3 doses and the
# observation grids come in a few fixed sizes, so the tests share compilations.
sim = eqx.filter_jit(simulate)
TS6 = jnp.array([0.25, 0.5, 1.0, 2.0, 4.0, 6.0])


def _reg(times, amounts, durations=None, cmts=None):
    return Regimen.make(times, amounts, durations, cmts, size=3)


def _theta(drug=NEUTRAL, species="human", bw=None):
    return MODEL.pack(pbpk_params(species, drug, bw))


def _auc(conc):
    """Trapezoid AUC on `T_AUC` plus the log-linear terminal tail ``C_last / lambda_z``."""
    c = np.asarray(conc)
    lam = np.log(c[-2] / c[-1]) / (T_AUC[-1] - T_AUC[-2])
    return float(np.trapezoid(c, T_AUC) + c[-1] / lam)


# ----------------------------------------------------------------------------- physiology
@pytest.mark.parametrize("species", SPECIES)
def test_species_tables_complete_and_flows_sum_to_cardiac_output(species):
    p = physiology(species)
    assert set(p.volumes) == set(TISSUES) | {"arterial", "venous"}
    assert set(p.flows) == set(TISSUES)
    assert all(v > 0 and math.isfinite(v) for v in p.volumes.values())
    assert all(q > 0 and math.isfinite(q) for q in p.flows.values())
    assert p.gfr > 0 and p.co > 0 and 0.3 < p.hct < 0.6
    # Venous return (systemic tissues, liver carrying the portal flow) is the cardiac output,
    # and the lung receives all of it.
    assert sum(p.flows[t] for t in SYSTEMIC) == pytest.approx(p.co, rel=1e-12)
    assert p.flows["lung"] == pytest.approx(p.co, rel=1e-12)
    assert p.q_hepatic_artery > 0
    assert sum(p.flows[t] for t in PORTAL) < p.flows["liver"]
    # The body closes: tissues + blood = body weight (density 1).
    assert sum(p.volumes.values()) == pytest.approx(p.bw, rel=1e-12)


def test_body_weight_scaling_is_allometric():
    ref, big = physiology("rat"), physiology("rat", bw=0.5)
    s = 0.5 / ref.bw
    for t in TISSUES:
        assert big.volumes[t] == pytest.approx(ref.volumes[t] * s, rel=1e-12)
        assert big.flows[t] == pytest.approx(ref.flows[t] * s**0.75, rel=1e-12)
    assert big.gfr == pytest.approx(ref.gfr * s**0.75, rel=1e-12)
    assert big.co == pytest.approx(ref.co * s**0.75, rel=1e-12)


def test_reference_values_match_cited_tables():
    h = physiology("human")  # ICRP 89 male
    assert h.bw == 73.0 and h.co == pytest.approx(390.0) and h.volumes["liver"] == pytest.approx(1.8)
    assert h.flows["kidney"] / h.co == pytest.approx(0.19)
    r = physiology("rat")  # Davies & Morris 1993: CO 74 mL/min, GFR 1.31 mL/min
    assert r.co == pytest.approx(74 * 0.06) and r.gfr == pytest.approx(1.31 * 0.06)


# ----------------------------------------------------------------------------- partition
def test_kp_hydrophilic_neutral_is_tissue_water():
    # logP -> -inf, fu = 1: no lipid or protein binding, Kp = fEW + fIW + 0.7 fNP (R&R 2006 eq. 3).
    kp = partition_coefficients(Drug(logp=-9.0, fu=1.0), "human")
    for t in TISSUES:
        c = TISSUE_COMPOSITION[t]
        assert kp[t] == pytest.approx(c["fEW"] + c["fIW"] + 0.7 * c["fNP"], rel=1e-6)


def test_kp_neutral_lipid_term_and_adipose():
    # Published worked form of R&R 2006 for a neutral drug, adipose uses P_vo = 10^(1.115 logP - 1.35).
    d = Drug(logp=3.0, fu=0.5)
    kp = partition_coefficients(d, "rat")
    p, pvo = 1e3, 10 ** (1.115 * 3.0 - 1.35)
    binding = 1 / 0.5 - 1 - (p * 0.0023 + (0.3 * p + 0.7) * 0.0013)
    c = TISSUE_COMPOSITION["adipose"]
    expect = 0.5 * (c["fEW"] + c["fIW"] + pvo * c["fNL"] + (0.3 * pvo + 0.7) * c["fNP"]
                    + max(binding, 0.0) * c["lip"])
    assert kp["adipose"] == pytest.approx(expect, rel=1e-12)
    # More lipophilic -> higher adipose Kp.
    assert partition_coefficients(Drug(logp=4.0, fu=0.5))["adipose"] > kp["adipose"]


def test_strong_base_phospholipid_affinity_reproduces_blood_plasma_ratio():
    # R&R 2005: Ka_AP is calibrated so that the erythrocyte partition gives the measured BP.
    from pkpd_jax.pbpk.partition import PH_BC, PH_PLASMA, _ionisation, _kpu_bc_unbound

    h = physiology("human").hct
    kp = partition_coefficients(BASE, "human")
    x, y, xbc = _ionisation(BASE, 7.0), _ionisation(BASE, PH_PLASMA), _ionisation(BASE, PH_BC)
    c = TISSUE_COMPOSITION["muscle"]
    p = 10**BASE.logp
    neutral_part = c["fEW"] + x * c["fIW"] / y + (p * c["fNL"] + (0.3 * p + 0.7) * c["fNP"]) / y
    ka_ap = (kp["muscle"] / BASE.fu - neutral_part) * y / (c["AP"] * (x - 1))
    kpu_bc = _kpu_bc_unbound(BASE) + ka_ap * _BC["AP"] * (xbc - 1) / y
    assert 1 - h + h * BASE.fu * kpu_bc == pytest.approx(BASE.bp, rel=1e-10)
    # Strong bases accumulate in phospholipid-rich tissues (lung, kidney, liver) over adipose.
    assert min(kp["lung"], kp["kidney"], kp["liver"]) > 5 * kp["adipose"]


def test_acid_kp_small_and_bp_prediction():
    kp = partition_coefficients(ACID, "human")
    assert all(0 < v < 1 for v in kp.values())  # ionised, albumin-bound acids stay in plasma
    h = physiology("human").hct
    assert blood_plasma_ratio(ACID) == pytest.approx(1 - h + h * ACID.fu * (
        (1 + 10 ** (7.22 - 4.0)) * 0.603 + 10**1.2 * 0.0017 + (0.3 * 10**1.2 + 0.7) * 0.0029
    ) / (1 + 10 ** (7.4 - 4.0)), rel=1e-12)


# ----------------------------------------------------------------------------- dynamics
def test_mass_balance_iv_infusion_and_oral():
    theta = MB.pack(pbpk_params("human", NEUTRAL))
    reg = _reg([0.0, 2.0, 5.0], [100.0, 50.0, 80.0], [0.0, 3.0, 0.0], [IV_CMT, IV_CMT, ORAL_CMT])
    ts = jnp.array([0.5, 2.0, 3.5, 5.0, 6.0, 24.0, 200.0])
    sol = sim(MB, theta, reg, ts)
    total = np.asarray(sol.states).sum(axis=1)
    given = np.array([100, 100, 100 + 25, 150, 230, 230, 230])  # pre-dose at dose times
    np.testing.assert_allclose(total, given, rtol=1e-10)
    assert np.all(np.asarray(sol.states) >= -1e-9)
    # unabsorbed oral fraction (1 - fa) of the oral dose
    assert float(sol.states[-1, len(STATES) + 2]) == pytest.approx(80 * (1 - NEUTRAL.fa), rel=1e-6)


@pytest.mark.parametrize("drug", [NEUTRAL, BASE, ACID], ids=lambda d: d.name)
def test_clearance_dose_over_auc(drug):
    theta = _theta(drug)
    sol = sim(MODEL, theta, _reg([0.0], [100.0]), jnp.asarray(T_AUC))
    assert float(sol.conc[-1]) < 1e-3 * float(jnp.max(sol.conc))  # tail < 0.1% of the AUC
    cl = 100.0 / _auc(sol.conc)
    assert cl == pytest.approx(float(clearance_analytic(pbpk_params("human", drug))), rel=2e-4)


@pytest.mark.parametrize("drug", [NEUTRAL, BASE], ids=lambda d: d.name)
def test_vss_and_css_at_steady_state(drug):
    p = pbpk_params("human", drug)
    theta = MODEL.pack(p)
    # (the expm path is exact per step; steps of <= 100 h keep the matrix exponential finite)
    rate, t_end = 10.0, 4000.0
    sol = sim(MODEL, theta, _reg([0.0], [rate * t_end], [t_end]), jnp.linspace(100.0, t_end - 1.0, 40))
    c_ss = float(sol.conc[-1])
    amount = float(jnp.sum(sol.states[-1, 1:]))  # all but the gut lumen
    assert rate / c_ss == pytest.approx(float(clearance_analytic(p)), rel=1e-8)
    assert amount / c_ss == pytest.approx(float(vss_analytic(p)), rel=1e-8)
    # Without elimination the textbook Vss = V_blood BP + sum V_t Kp_t holds exactly.
    p0 = dict(p, CLint=0.0, GFR=1e-12)
    assert float(vss_analytic(p0)) == pytest.approx(float(vss_textbook(p0)), rel=1e-10)


def test_oral_bioavailability_well_stirred():
    p = pbpk_params("human", NEUTRAL)
    theta = MODEL.pack(p)
    iv = sim(MODEL, theta, _reg([0.0], [100.0]), jnp.asarray(T_AUC))
    po = sim(MODEL, theta, _reg([0.0], [100.0], cmts=[ORAL_CMT]), jnp.asarray(T_AUC))
    f = _auc(po.conc) / _auc(iv.conc)
    e_h = float(hepatic_extraction(p))
    assert 0.2 < e_h < 0.9
    assert f == pytest.approx(NEUTRAL.fa * (1 - e_h), rel=5e-4)
    assert float(oral_bioavailability(p)) == pytest.approx(NEUTRAL.fa * (1 - e_h))


def test_expm_path_agrees_with_ode_path():
    # Short horizon: the lung and blood pools are fast (CO / V ~ 10^3 1/h), Tsit5 needs small steps.
    theta = _theta(BASE)
    reg = _reg([0.0, 0.5], [1.0, 2.0], [0.25, 0.0], [IV_CMT, ORAL_CMT])
    ts = TS6 / 3.0
    exact = sim(MODEL, theta, reg, ts)
    cfg = SolverConfig(rtol=1e-9, atol=1e-12, method="ode", max_steps=20000)
    ode = sim(MODEL, theta, reg, ts, config=cfg)
    assert int(ode.status) == 0
    np.testing.assert_allclose(ode.conc, exact.conc, rtol=1e-6)


def test_gradient_wrt_drug_parameters_matches_finite_differences():
    theta = _theta(NEUTRAL)
    reg = _reg([0.0], [100.0], cmts=[ORAL_CMT])
    ts = TS6
    names = MODEL.param_names

    def auc_like(th):
        return jnp.sum(sim(MODEL, th, reg, ts).conc)

    g = jax.jit(jax.grad(auc_like))(theta)
    for name in ("CLint", "fu", "Kp_adipose", "ka"):
        i = names.index(name)
        h = 1e-5 * float(theta[i])
        fd = (auc_like(theta.at[i].add(h)) - auc_like(theta.at[i].add(-h))) / (2 * h)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-12), name
    # analytic clearance is differentiable too: dCL/dCLint > 0
    assert float(jax.grad(lambda th: clearance_analytic(th))(theta)[names.index("CLint")]) > 0


@pytest.mark.slow  # ~30 s of compilation; CI time budget
def test_population_vmaps_over_physiologies():
    bws = [50.0, 60.0, 73.0, 90.0, 110.0]
    theta = jnp.stack([_theta(NEUTRAL, "human", bw) for bw in bws])
    reg = _reg([0.0], [100.0], [1.0])
    ts = TS6
    pop = simulate_population(MODEL, theta, reg, ts)
    for k in range(len(bws)):
        one = sim(MODEL, theta[k], reg, ts)
        np.testing.assert_allclose(pop.conc[k], one.conc, rtol=1e-10)
    # analytic quantities vectorise over the population axis
    cls = np.asarray(clearance_analytic(theta))
    assert cls.shape == (5,) and np.all(np.diff(cls) > 0)
    # heavier subjects: lower early concentrations (larger volumes)
    assert np.all(np.diff(np.asarray(pop.conc[:, 0])) < 0)


@pytest.mark.parametrize("species", SPECIES)
def test_every_species_simulates(species):
    theta = _theta(NEUTRAL, species)
    p = pbpk_params(species, NEUTRAL)
    sol = sim(MODEL, theta, _reg([0.0], [1.0]), TS6)
    assert int(sol.status) == 0 and np.all(np.asarray(sol.conc) > 0)
    assert 0 < float(clearance_analytic(p)) < physiology(species).co


# ----------------------------------------------------------------------------- registry, errors
def test_registry_keeps_compartmental_list():
    assert isinstance(get_pk("pbpk_whole_body"), WholeBodyPBPK)
    assert "pbpk_whole_body" not in list_models("pk") and len(list_models("pk")) == 10
    assert WholeBodyPBPK not in PK_MODELS
    joint = get_model("pbpk_whole_body", "pd_direct_emax")
    theta = jnp.concatenate([_theta(), jnp.array([1.0, 10.0, 0.5])])
    y = jnp.zeros(joint.n_states).at[IV_CMT].set(2.0)
    c, r = joint.observe(y, theta)
    p = pbpk_params("human", NEUTRAL)
    assert float(c) == pytest.approx(2.0 / p["V_venous"] / p["BP"])
    assert float(r) == pytest.approx(1.0 + 10.0 * float(c) / (0.5 + float(c)))
    assert joint.vector_field(0.0, y, theta, jnp.zeros(joint.n_states)).shape == (len(STATES),)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logp=2.0, fu=0.0), r"fu=.*\(0, 1\]"),
        (dict(logp=2.0, fu=1.5), r"fu=.*\(0, 1\]"),
        (dict(logp=2.0, fu=0.1, kind="base"), r"pka=.*kind='base'"),
        (dict(logp=2.0, fu=0.1, pka=4.0), r"pka=.*neutral"),
        (dict(logp=2.0, fu=0.1, kind="zwitterion", pka=4.0), r"kind="),
        (dict(logp=float("nan"), fu=0.1), r"logp=.*finite"),
        (dict(logp=2.0, fu=0.1, clint=-1.0), r"clint=.*>= 0"),
        (dict(logp=2.0, fu=0.1, fa=0.0), r"fa=.*\(0, 1\]"),
        (dict(logp=2.0, fu=0.1, bp=-1.0), r"bp="),
    ],
)
def test_drug_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Drug(**kwargs)


def test_bad_species_and_body_weight():
    with pytest.raises(ValueError, match="unknown species 'pig'.*mouse, rat, dog, monkey, human"):
        physiology("pig")
    with pytest.raises(ValueError, match="unknown species"):
        partition_coefficients(NEUTRAL, "pig")
    with pytest.raises(ValueError, match="positive body weight"):
        physiology("human", bw=-3.0)
    with pytest.raises(TypeError, match="Drug"):
        pbpk_params("human", {"logp": 2.0})
    with pytest.raises(ValueError, match="lacks PBPK parameters"):
        vss_analytic({"fu": 0.1})
