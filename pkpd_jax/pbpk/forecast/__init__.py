"""A Transformer that forecasts the rest of a PBPK plasma curve from drug, species, dose and a few
early concentrations.

**Task.** A subject receives one dose (IV bolus into the venous blood or oral into the gut lumen)
and is sampled on a fixed log-spaced grid of ``n_times`` times. Given the drug's properties, the
species and body weight, the dose and route, and the first ``k_obs`` observed concentrations
(with a proportional measurement error), the network predicts the log concentration at the
remaining grid times.

**Corpus** ([`build_corpus`][]). Random drugs (kind neutral / acid / base, logP, fu, pKa, CLint, ka,
fa; ranges in [`CorpusConfig`][]) × random subjects (species uniform over ``SPECIES``, body weight
log-normal around the species reference, dose per kg log-uniform, route IV or oral with equal
probability), simulated with the whole-body model ``pbpk_whole_body``. Since that model is linear
and every subject gets one dose, the plasma curve is the exact solution ``C(t) = e_venous^T exp(K t)
e_dose · dose / (V_venous · BP)`` with ``K`` the model's linear generator
(`PKPDModel.linear_generator`, the matrix the simulator's ``method="expm"`` path uses), propagated
from one grid time to the next with ``expm(K Δt)`` ([`single_dose_curves`][]): thousands of subjects
in seconds. `tests/test_pbpk_forecast.py` checks it against ``scipy.linalg.expm`` and the simulator,
and the study against the simulator's ODE solve. The grid of a species is the human grid
(``t_min``-``t_max`` h) scaled by ``(BW_ref / 73 kg)**0.25`` (physiological time: a mouse is sampled
over 0.03-6 h). Points below ``lloq_frac`` × the subject's C_max are *below the limit of
quantification*: they are not fed to the network, not in the loss and not scored. Observations are
``log C + N(0, noise_sd²)``; the targets are the noise-free log concentrations. Drugs are split into
train / validation / test, so test drugs are never seen in training.

**Inputs** (per subject): 21 features, standardised with the training-set mean and SD: the drug
(logP, log10 fu, acid / base flags, pKa - 7 for ionisable drugs, log10 CLint, log10 ka, fa, log10
of the predicted blood:plasma ratio), the species (one-hot), log10 body weight, log10 dose, an oral
flag, and four closed-form summaries of the subject's PBPK parameters ([`derived_features`][]:
analytic clearance and Vss per kg, bioavailability, CL / Vss; algebra on the parameters, no ODE);
the grid times; the dose-normalised log concentrations ``log C - log(dose / BW)`` where observed.

**Network** ([`PBPKForecaster`][]): one context token (the descriptors through a two-layer MLP)
followed by one token per grid time: ``W·[y, observed, log t] + PE(t)``, where ``y`` is the
standardised observed value (0 for the times to forecast), ``observed`` a flag and ``PE`` the
continuous-time sinusoidal encoding of the amortized model-selection encoder. Pre-norm
Transformer blocks from the same encoder (`pkpd_jax.amortized.encoder.EncoderBlock`) attend over
all tokens; a final layer norm and a GELU head read one standardised log concentration per time
token. The network is float32 and handles one subject (equinox convention); [`predict`][] vmaps.

**Training** ([`train_forecaster`][]): mean squared error of the standardised log concentration
at the forecast times above the LLOQ; AdamW with warm-up and cosine decay and gradient clipping
(`pkpd_jax.amortized.train.make_optimizer`); the observation noise is redrawn every epoch
(seeded by ``(seed, epoch)``); the model with the best validation loss is kept. Deterministic
given the seeds.

**Metrics** ([`evaluate`][]): fold error ``exp|log C_pred - log C_true|`` over every forecast
point above the LLOQ of the held-out subjects; the median and the fraction within 2-fold, next
to a log-linear extrapolation of the last two observations as a naive baseline.

```python
from pkpd_jax.pbpk.forecast import CorpusConfig, ForecastConfig, build_corpus, evaluate, train_forecaster
corpus = build_corpus(CorpusConfig(n_drugs=200, subjects_per_drug=4, seed=0))
result = train_forecaster(corpus, ForecastConfig(epochs=5), seed=0)
metrics = evaluate(result.model, result.norm, corpus, "test")
```

One concept per module: the corpus (`_corpus`), the network (`_network`), and training,
evaluation and the checkpoint file (`_train`).
"""

from ._corpus import (
    DESCRIPTOR_NAMES as DESCRIPTOR_NAMES,
    N_RAW_DESCRIPTORS as N_RAW_DESCRIPTORS,
    CorpusConfig as CorpusConfig,
    ForecastCorpus as ForecastCorpus,
    build_corpus as build_corpus,
    derived_features as derived_features,
    descriptors as descriptors,
    sample_drugs as sample_drugs,
    single_dose_curves as single_dose_curves,
    species_grid as species_grid,
)
from ._network import (
    ForecastConfig as ForecastConfig,
    PBPKForecaster as PBPKForecaster,
)
from ._train import (
    TrainResult as TrainResult,
    evaluate as evaluate,
    fold_error_summary as fold_error_summary,
    forecast_fn as forecast_fn,
    load_forecaster as load_forecaster,
    predict as predict,
    save_forecaster as save_forecaster,
    train_forecaster as train_forecaster,
)


__all__ = [
    "CorpusConfig",
    "ForecastCorpus",
    "DESCRIPTOR_NAMES",
    "N_RAW_DESCRIPTORS",
    "sample_drugs",
    "species_grid",
    "descriptors",
    "derived_features",
    "single_dose_curves",
    "build_corpus",
    "ForecastConfig",
    "PBPKForecaster",
    "TrainResult",
    "train_forecaster",
    "predict",
    "forecast_fn",
    "fold_error_summary",
    "evaluate",
    "save_forecaster",
    "load_forecaster",
]
