"""Physiologically constrained denoising diffusion model (DDPM) of the virtual-patient covariate vector.

**Data.** The covariate vector of [`reference.VARIABLES`][] (natural units) is standardised column-wise
with the training set's mean and SD. ``female`` is a continuous coordinate like the others; samples are
rounded to 0/1 at the end (its constraint is only the range [0, 1]).

**Model.** DDPM (Ho et al. 2020) with the cosine noise schedule (Nichol & Dhariwal 2021), ``n_steps``
diffusion steps and ε-prediction. The denoiser is an MLP (``depth`` hidden layers of ``width`` units, SiLU)
on ``[x_t, sinusoidal embedding of t, condition]``.

**Conditioning** (classifier-free, Ho & Salimans 2022): the condition is ``[w·m_w, m_w, a·m_a, m_a]``, the
standardised body weight ``w`` and age ``a`` of the patient with masks ``m``; in training each mask is
dropped (set to 0) with probability ``cond_drop``, so one network is unconditional, weight-, age- and
weight+age-conditional. To sample a body-weight range (e.g. 70-140 kg) the target weights are drawn from the
training population's weight distribution truncated to the range (inverse CDF of the stored quantiles), so
the result is the reference population *restricted* to that range, not a flat one; the same for an age
band. The network is asked for that weight; patients whose generated weight still falls outside the range
(a few %) are redrawn when ``enforce_range`` (default), and the raw in-range fraction is reported.

**Physics term.** The loss is ``E‖ε̂ - ε‖² + λ · E[P(x̂0)]`` where ``P`` is the summed constraint
violation of [`constraints.penalty`][] of the denoised estimate ``x̂0 = (x̃_s - √(1-ᾱ_s) ε̂)/√ᾱ_s``
(un-standardised to natural units), taken at an input *off* the data: ``x̃_s = √ᾱ_s (x0 + σ u m⊙δ) +
√(1-ᾱ_s) ε'`` with ``δ, ε' ~ N(0, I)``, ``u ~ U(0, 1)``, ``σ = physics_sigma`` (standardised units) and
``m`` the mask of [`PHYSICS_PERTURB`][] (all variables but ``female``), at a step ``s = ⌊n_ᾱ v²⌋``,
``v ~ U(0, 1)``, ``n_ᾱ`` the number of steps with ``ᾱ ≥ min_abar`` (the last sampling steps, the smallest
favoured). Why: the sampler's final draw is the last step's x̂0, and without the term the chain ends
slightly off the constraint set (mostly ``bmi_consistency``, a 1 % equality, and the hard age limits
18/85 y). On noised *real* data x̂0 already satisfies the constraints, so a term there (the first version)
had no gradient and changed nothing (28.3 % vs 28.8 % violations); on perturbed inputs the denoiser
learns to map near-constraint points onto the constraint set. Only small noise levels count
(``min_abar = 0.98``, the last 16 of 200 steps): at larger noise the ideal x̂0 (a posterior mean) is
legitimately off a curved constraint such as BMI = W/H², and penalising it there biased the sampler
(at ``min_abar = 0.5`` the ages were squeezed inward, Wasserstein-1 of age 2-4x that of the plain
model). λ is ramped in after 30 % of the steps (see [`train`][]). ``λ = 0`` is the same model without
the physics term (the term is then only logged); the denoising term, data, seeds and sampler are the same.

Measured (sweep: 40 000 training patients, seed 0, 4000 steps, 20 000 unguided samples, 10 000 held-out;
without physics 14.0 % violate a constraint, mean W1 0.0217, correlation error 0.0137): λ = 5,
σ = 0.3, ``min_abar = 0.98`` gives 0.25 % (W1 +6 %, correlation error +7 %); λ = 10 without
perturbing age 0.98 % (+2 %, +9 %); λ = 30 0.15 % (+17 %, +16 %; ``female`` also perturbed); λ = 100
without perturbing age 0.18 % (+19 %, +20 %); at 2000 steps and ``min_abar = 0.5``, λ = 30-300 reached
0.17-0.9 % but W1 +50-150 %. λ trades
violations against fidelity; the classifier two-sample AUC rises more (0.56 -> 0.62 at λ = 5). The study
(``experiments/virtual_patients.py``, results in ``experiments/results/virtual_patients/``) uses λ = 5:
with 100 000 unguided patients per model it gives 0.33 % violations (``bmi_consistency`` 0.03 %,
``ranges`` 0.29 %) against 13.84 % without the term (``bmi_consistency``
11.94 %, ``ranges`` 2.31 %), 42x fewer, at W1 0.0212 vs 0.0199 (+7 %) and correlation error 0.0154 vs
0.0145 (+6 %); KS +11 %, classifier AUC 0.626 vs 0.570.

**Guidance (optional).** With ``guidance > 0`` each sampling step moves ``x̂0`` by ``guidance_iters``
gradient steps ``-guidance · ∇P(x̂0)`` (standardised units) before the posterior step, and the final
sample ``final_iters`` more (in the spirit of reconstruction guidance, Chung et al. 2023, with the
constraint penalty as the loss). Off unless asked for or the checkpoint's ``meta["default_guidance"]``
sets it (the shipped one does; see the study's results).

The network is float32. Every random step takes a seed; the same seed gives the same samples.
Checkpoints are one file: a JSON header line (config, standardisation, quantiles, training record) then
``equinox.tree_serialise_leaves`` of the denoiser.
"

One concept per module: the network and noise schedule (`_network`), the sampler (`_sampler`),
training (`_train`), the checkpoint file (`_io`) and the fidelity metrics (`_fidelity`).
"""

from ._fidelity import (
    fidelity as fidelity,
)
from ._io import (
    load as load,
    load_pretrained as load_pretrained,
    pretrained_path as pretrained_path,
    save as save,
)
from ._network import (
    DTYPE as DTYPE,
    N_COND as N_COND,
    PHYSICS_PERTURB as PHYSICS_PERTURB,
    Denoiser as Denoiser,
    DiffusionConfig as DiffusionConfig,
    schedule as schedule,
)
from ._sampler import (
    VirtualPatientDiffusion as VirtualPatientDiffusion,
)
from ._train import (
    TrainResult as TrainResult,
    train as train,
)


__all__ = ["PHYSICS_PERTURB", "DiffusionConfig", "Denoiser", "VirtualPatientDiffusion", "train", "save",
           "load", "pretrained_path", "load_pretrained", "fidelity"]
