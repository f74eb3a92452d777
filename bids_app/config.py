"""The options of one tmstarget run, and the science defaults they start from.

The defaults and their literature live with the graph, in :mod:`tmstarget.workflows.defaults`
(defined once there); they are re-exported here so that the face and existing code read them as
``tmstarget.config.X``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tmstarget.workflows import defaults
from tmstarget.workflows.defaults import (  # noqa: F401  (re-exported)
    CONFOUND_STRATEGIES,
    DEFAULT_COIL_ORIENTATION,
    DEFAULT_DIDT_A_PER_US,
    DLPFC_RADIUS_MM,
    DLPFC_SITES_MNI,
    EFIELD_REFERENCES,
    GROUP_OPTIMAL_MNI,
    REFERENCES,
    RELIABILITY_GRADES,
    SGACC_CENTER_MNI,
    SGACC_RADIUS_MM,
    SNT_CLUSTER_DIAMETER_MM,
    TARGET_METHODS,
)
from tmstarget.workflows.coil_models import COIL_GEOMETRIES, DEFAULT_COIL

#: A BIDS label (participant, session, task; the seed name becomes one too): letters and digits.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")


def clean_label(label, what="participant"):
    """``sub-01`` or ``01`` -> ``01``; anything that is not a plain BIDS label is refused."""
    # the task and the seed name become file-name entities too (task-<label>, desc-<label>)
    prefix = {"participant": "sub-", "session": "ses-", "task": "task-", "seed name": "desc-"}[what]
    value = label[len(prefix):] if label.startswith(prefix) else label
    if not LABEL_PATTERN.match(value):
        raise ValueError(f"invalid {what} label {label!r}: BIDS labels are letters and digits only")
    return value


#: The coil orientations of ``--coil-orientation``, described (the E-field plan, issue 14).
COIL_ORIENTATIONS = {
    "clinical": "the handle at the clinical angle (--handle-angle, default 45 degrees from the "
    "midline, posterior-lateral); the field it induces is reported",
    "efield": "the handle angle giving the largest E-field magnitude at each target (1-degree "
    "sweep; the clinical angle kept unless another gains more than 1 %); the exports carry it",
}


@dataclass
class Options:
    """Everything that changes what tmstarget computes; saved with the outputs as ``config.json``."""

    task_id: str = "rest"
    space: str = "MNI152NLin2009cAsym"
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    # denoising
    confounds: str = defaults.CONFOUNDS
    fd_threshold: float | None = defaults.FD_THRESHOLD_MM  # mm; None = no censoring
    min_time: float = defaults.MIN_TIME_S  # s of retained data per run
    min_total_time: float = defaults.MIN_TOTAL_TIME_S  # s over all runs
    high_pass: float = defaults.HIGH_PASS_HZ  # Hz
    low_pass: float = defaults.LOW_PASS_HZ  # Hz
    smoothing_fwhm: float = defaults.SMOOTHING_FWHM_MM  # mm
    # seed
    seed_center: tuple[float, float, float] = SGACC_CENTER_MNI
    seed_radius: float = SGACC_RADIUS_MM
    seed_image: str | None = None  # mask or weighted map, MNI152NLin2009cAsym
    seed_name: str = defaults.SEED_NAME
    allow_poor_seed: bool = False  # accept a seed below the seed-quality hard limits (seed_quality.py)
    # target selection
    search_region_image: str | None = None  # mask, MNI152NLin2009cAsym
    target_method: str = defaults.TARGET_METHOD
    cluster_percentile: float = defaults.CLUSTER_PERCENTILE  # most negative % of search-region voxels
    gm_threshold: float = defaults.GM_THRESHOLD  # grey-matter probability
    # reliability
    bootstrap_samples: int = defaults.BOOTSTRAP_SAMPLES  # 0 skips the bootstrap
    bootstrap_block: float = defaults.BOOTSTRAP_BLOCK_S  # s per circular block
    random_seed: int = defaults.RANDOM_SEED
    # coil
    handle_angle: float = defaults.HANDLE_ANGLE_DEG  # degrees from the midline, posterior-lateral
    # electric field (tmstarget.workflows.efield_plan)
    coil: str = DEFAULT_COIL  # a name of COIL_GEOMETRIES
    coil_orientation: str = DEFAULT_COIL_ORIENTATION  # "clinical" or "efield"
    didt: float = DEFAULT_DIDT_A_PER_US  # A/us the fields are given for (SimNIBS default)
    motor_threshold: float | None = None  # measured resting motor threshold, % MSO

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> "Options":
        """Options saved by an earlier run (``log/config.json``); unknown keys are an error."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}")
        return cls(**data)

    def parameters(self) -> dict:
        """The scientific parameters with their sources, as written into the JSON sidecars."""
        strategy = CONFOUND_STRATEGIES[self.confounds]
        return {
            "Denoising": {
                "Strategy": self.confounds,
                "Description": strategy["description"],
                "NonSteadyStateVolumesDropped": True,
                "FramewiseDisplacementThreshold_mm": self.fd_threshold,
                "MinimumRetainedTime_s": self.min_time,
                "MinimumTotalRetainedTime_s": self.min_total_time,
                "BandPass_Hz": [self.high_pass, self.low_pass],
                "SmoothingFWHM_mm": self.smoothing_fwhm,
                "References": [REFERENCES[k] for k in strategy["references"]],
            },
            "Seed": {
                "Name": self.seed_name,
                "Image": self.seed_image,
                "CenterMNI_mm": None if self.seed_image else list(self.seed_center),
                "Radius_mm": None if self.seed_image else self.seed_radius,
                "References": [REFERENCES["Fox2012"], REFERENCES["Cash2019"], REFERENCES["Cash2021"]],
            },
            "SearchRegion": {
                "Image": self.search_region_image,
                "SpheresMNI_mm": None
                if self.search_region_image
                else {k: list(v) for k, v in DLPFC_SITES_MNI.items()},
                "Radius_mm": None if self.search_region_image else DLPFC_RADIUS_MM,
                "GreyMatterProbabilityThreshold": self.gm_threshold,
                "References": [REFERENCES["Fox2012"], REFERENCES["Cash2021"]],
            },
            "TargetSelection": {
                "Method": self.target_method,
                "Description": TARGET_METHODS[self.target_method],
                "ClusterPercentile": self.cluster_percentile if self.target_method in ("cluster", "snt") else None,
                "References": [REFERENCES["Cash2021"]]
                + ([REFERENCES["Cole2020"]] if self.target_method == "snt" else []),
            },
            "ReliabilityMethod": {
                "SplitHalf": "target and map from each half of the data (two groups of runs, or the "
                "two halves in time of a single run): distance between the targets, correlation of "
                "the maps in the search region",
                "BlockBootstrap": {"Samples": self.bootstrap_samples,
                                   "BlockLength_s": self.bootstrap_block,
                                   "RandomSeed": self.random_seed,
                                   "Description": "circular block bootstrap of the retained volumes "
                                   "of each run; the 95th percentile of the bootstrap targets' "
                                   "distances to the target"},
                "Grades": RELIABILITY_GRADES,
                "References": [REFERENCES[k] for k in ("Bellec2010", "Cash2021", "Lynch2020",
                                                       "Deng2013", "VanDijk2010")],
            },
            "RunCombination": "mean of per-run Fisher-z maps weighted by retained volumes",
            "Coil": {
                "HandleAngleFromMidline_deg": self.handle_angle,
                "Convention": "handle pointing posterior and laterally away from the midline "
                "(clinical default for left DLPFC)",
            },
            "Efield": {
                "Coil": self.coil,
                "CoilDescription": COIL_GEOMETRIES[self.coil][0],
                "CoilSource": COIL_GEOMETRIES[self.coil][2],
                "CoilDefault": f"{DEFAULT_COIL}: the figure-of-eight coil whose published "
                "geometry the model reproduces (Thielscher & Kammer 2002)",
                "Orientation": self.coil_orientation,
                "OrientationDescription": COIL_ORIENTATIONS[self.coil_orientation],
                "OrientationDefault": f"{DEFAULT_COIL_ORIENTATION}: the coil is placed as "
                "clinics place it unless asked otherwise",
                "dIdt_A_per_us": self.didt,
                "dIdtSource": f"default {DEFAULT_DIDT_A_PER_US:g} A/us, SimNIBS's default dI/dt "
                "(1e6 A/s); every field is linear in dI/dt (Drakaki et al. 2022 list the dI/dt "
                "of clinical stimulators at 100 % output)",
                "MotorThreshold_pct_MSO": self.motor_threshold,
                "MotorThresholdNote": "the measured resting motor threshold (% of maximum "
                "stimulator output) turns the field-based dose into % MSO; without it the dose "
                "is given in % of the motor threshold only",
                "HeadModel": "spherically symmetric conductor fitted locally to the scalp "
                "under the coil (Eaton 1992; Heller & van Hulsteyn 1992)",
                "References": [EFIELD_REFERENCES[k] for k in ("Eaton1992",
                                                              "HellerVanHulsteyn1992",
                                                              "Deng2013", "Stokes2007")],
            },
        }
