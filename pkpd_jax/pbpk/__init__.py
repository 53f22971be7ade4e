"""Whole-body physiologically based pharmacokinetics (PBPK).

- [`physiology`][]: reference organ volumes, blood flows, cardiac output and GFR for mouse, rat,
  dog, monkey and human (Brown et al. 1997; Davies & Morris 1993; ICRP 89), scaled to any body
  weight;
- [`Drug`][] and [`partition_coefficients`][]: tissue:plasma Kp by Rodgers & Rowland (2005, 2006);
- [`WholeBodyPBPK`][]: the perfusion-limited model, registered as ``pbpk_whole_body`` so that it
  simulates, vmaps, differentiates and doses like every other PK model; [`pbpk_params`][] builds
  its θ, and [`vss_analytic`][] / [`clearance_analytic`][] give the analytic Vss and clearance.

```python
from pkpd_jax.models import get_model
from pkpd_jax.pbpk import Drug, pbpk_params
model = get_model("pbpk_whole_body")
theta = model.pack(pbpk_params("human", Drug(logp=2.0, fu=0.2, clint=5.0)))
```
"""

from .model import (
    IV_CMT as IV_CMT,
    ORAL_CMT as ORAL_CMT,
    REFERENCE_DRUG as REFERENCE_DRUG,
    STATES as STATES,
    WholeBodyPBPK as WholeBodyPBPK,
    WholeBodyPBPKMassBalance as WholeBodyPBPKMassBalance,
    clearance_analytic as clearance_analytic,
    hepatic_extraction as hepatic_extraction,
    oral_bioavailability as oral_bioavailability,
    pbpk_params as pbpk_params,
    vss_analytic as vss_analytic,
    vss_textbook as vss_textbook,
)
from .partition import (
    TISSUE_COMPOSITION as TISSUE_COMPOSITION,
    Drug as Drug,
    blood_plasma_ratio as blood_plasma_ratio,
    partition_coefficients as partition_coefficients,
)
from .physiology import (
    PORTAL as PORTAL,
    SPECIES as SPECIES,
    SYSTEMIC as SYSTEMIC,
    TISSUES as TISSUES,
    Physiology as Physiology,
    physiology as physiology,
)
