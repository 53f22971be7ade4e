"""Neural allometry: a learned correction on top of the allometric power law for interspecies
scaling of clearance (CL) and steady-state volume (Vss).

**Simple allometry** (the base). From preclinical species ``S`` with body weights ``BW_s`` and
observed ``CL_s``, ``Vss_s``, the target species ``T`` gets

    log CL_T^allo  = mean_{s in S} [log CL_s  + 0.75 (log BW_T - log BW_s)]
    log Vss_T^allo = mean_{s in S} [log Vss_s + 1.00 (log BW_T - log BW_s)]

(fixed exponents; the geometric mean of the single-species predictions).

**Neural correction.** An equinox MLP ``g`` maps one (drug, species) pair to a log-space offset
``d_s = (d_CL, d_V)``: how far that species sits from the common power law for that drug. Its
input is the species' measured ``fu``, optionally the species' physiology (flows and GFR per
``BW^0.75``, liver, adipose and blood fractions, haematocrit: the same numbers for every body
weight of a species, so the network never sees body weight itself), the drug's descriptors
(logP, ion class, ionisation at plasma pH) and a context summarising the *source* observations
(mean allometrically normalised CL and Vss, mean ``CL / Q_h`` and ``CL / (fu GFR)``, mean log
fu). The prediction removes each source's offset before scaling and
adds the target's back:

    log CL_T = log CL_T^allo + d_T - mean_{s in S} d_s        (likewise for Vss)

so with ``g == 0`` it is exactly simple allometry; the final layer starts at zero (training
starts from allometry) and each offset is bounded, ``|d| <= bound`` (default ln 10), so a
poorly extrapolating network cannot move a prediction more than ``2 · bound`` from allometry.
Known rules are special cases: ``d_s = log fu_s`` is the unbound-fraction correction of
allometry (Tang & Mayersohn 2005; Øie & Tozer 1979 for Vss).

**Training protocols** (`TrainConfig.protocol`):

- ``"loso"`` (leave one species out; the honest "species held out" protocol): every training
  example predicts one *preclinical* species (mouse, rat, dog or monkey) from two or three of
  the other preclinical species. Human is never a training target and no human value of a
  training drug is used; human is predicted at test time from rat, dog and monkey;
- ``"human"``: as ``"loso"`` plus human targets of the *training* drugs (a company's
  historical compounds with human PK); test drugs stay held out.

**Physiology inputs** (`TrainConfig.physiology`, default off). Under ``"loso"`` the network sees
four training species only: their physiology vectors are four points, which identify a species
as well as a one-hot code would, and human is a fifth point outside their hull (smallest liver
fraction, largest adipose fraction); what the network does there is an unconstrained
extrapolation (in our study it biased human CL upwards). Off, the species enters only through
its measured fu (and the drug's data), so the offset is a species-agnostic function that
transfers to any species. With human targets in training (``"human"``) the physiology inputs
can be used.

**Simulated drug library** ([`sample_drugs`][]). Truth comes from the whole-body PBPK model's
analytic CL and Vss ([`clearance_analytic`][pkpd_jax.pbpk.clearance_analytic],
[`vss_analytic`][pkpd_jax.pbpk.vss_analytic]; float64) with each species' physiology and a
species-specific version of the drug. The interspecies assumptions (`SamplerConfig`) are
modelling choices for the simulation, not fitted to data:

- ion class neutral / acid / base with probabilities 0.30 / 0.25 / 0.45; logP ~ N(2.5, 1.3)
  clipped to [-1, 6]; pKa ~ U(3, 6.5) for acids and U(6, 10.5) for bases;
- fraction unbound: a drug-level log-odds ``a = mu_class - 0.6 (logP - 2.5) + N(0, 1.2)`` with
  ``mu`` = -2.5 (acid), -1.0 (neutral), -0.3 (base) (acids bind albumin strongly, lipophilic
  drugs bind more); each species ``logit fu_s = a + shift + N(0, 0.5)`` (log-normal-like
  species-to-species scatter); for acids ``shift`` = +0.8 mouse, +0.6 rat, +0.3 dog, +0.2
  monkey, 0 human (weaker albumin binding of acids in rodent plasma, qualitatively);
- hepatic intrinsic clearance per kg liver: a drug level ``log10 c ~ U(-0.5, 3.5)`` (L/h/kg
  liver, unbound); ``CLint_s = c (BW_ref,s / BW_ref,human)^(-0.25) exp(N(0, 0.5))``: liver
  metabolic capacity per gram falling with body size (Boxenbaum 1982, J Pharmacokinet Biopharm
  10:201, clearance ∝ BW^0.75 with liver mass ∝ BW) plus drug-by-species scatter (enzyme
  differences);
- strong bases (pKa >= 7) get a measured human blood:plasma ratio ``BP ~ logU(0.7, 2.5)``; its
  erythrocyte affinity ``Kpu_BC`` is kept across species (``BP_s = 1 - H_s + H_s fu_s Kpu_BC``);
  other drugs' BP is predicted (Rodgers & Rowland);
- body weight of each study ``BW_ref,s · exp(N(0, 0.1))``;
- "observed" CL and Vss: truth × ``exp(N(0, 0.2))`` (between-study variability), measured fu:
  truth × ``exp(N(0, 0.1))`` capped at 1. The test truth is the noiseless human value.

The network is float32 (its inputs are computed in float64); every random step takes a seed.
Checkpoints are one file: a JSON header line (configuration, feature standardisation, training
record) then ``equinox.tree_serialise_leaves`` of the ensemble.
"

One concept per module: the drug library (`_data`), the input features (`_features`), the
allometric baselines (`_baselines`), the network (`_network`), and training, prediction and
checkpoints (`_train`).
"""

from ._baselines import (
    fitted_allometry as fitted_allometry,
    fold_metrics as fold_metrics,
    simple_allometry as simple_allometry,
    single_species as single_species,
)
from ._data import (
    DEFAULT_SOURCES as DEFAULT_SOURCES,
    EXPONENTS as EXPONENTS,
    KINDS as KINDS,
    PRECLINICAL as PRECLINICAL,
    AllometryData as AllometryData,
    AllometryError as AllometryError,
    Observations as Observations,
    SamplerConfig as SamplerConfig,
    sample_drugs as sample_drugs,
)
from ._features import (
    FEATURES as FEATURES,
    SPECIES_FEATURES as SPECIES_FEATURES,
    build_inputs as build_inputs,
    make_observations as make_observations,
    species_features as species_features,
)
from ._network import (
    NeuralAllometry as NeuralAllometry,
    OffsetNet as OffsetNet,
    TrainConfig as TrainConfig,
)
from ._train import (
    evaluate as evaluate,
    load as load,
    predict as predict,
    save as save,
    train as train,
)


__all__ = [
    "AllometryError",
    "SamplerConfig",
    "TrainConfig",
    "Observations",
    "AllometryData",
    "NeuralAllometry",
    "PRECLINICAL",
    "DEFAULT_SOURCES",
    "KINDS",
    "sample_drugs",
    "species_features",
    "build_inputs",
    "make_observations",
    "simple_allometry",
    "fitted_allometry",
    "single_species",
    "fold_metrics",
    "train",
    "predict",
    "evaluate",
    "save",
    "load",
    "FEATURES",
    "SPECIES_FEATURES",
    "EXPONENTS",
    "OffsetNet",
]
