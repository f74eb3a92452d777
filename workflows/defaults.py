"""The science defaults of tmstarget, each with the literature it comes from.

Every number the science depends on is defined here once, beside the graph that uses it. The face
(:mod:`tmstarget.config`, the command line, the JSON sidecars, the README) reads them from this
module, so a default cannot drift from its documented source, and a pipeline that embeds the graph
(:func:`tmstarget.workflows.base.init_tmstarget_wf`) gets the same defaults without the face.
All coordinates are world millimetres, RAS, in MNI space (MNI152NLin2009cAsym; the published sites
were reported in MNI152 space and the MNI152 variants differ by a few mm at most).
"""

REFERENCES = {
    "Fox2012": "Fox MD, Buckner RL, White MP, Greicius MD, Pascual-Leone A. Efficacy of transcranial "
    "magnetic stimulation targets for depression is related to intrinsic functional connectivity with "
    "the subgenual cingulate. Biol Psychiatry. 2012;72(7):595-603. doi:10.1016/j.biopsych.2012.04.028",
    "Cash2019": "Cash RFH, Zalesky A, Thomson RH, Tian Y, Cocchi L, Fitzgerald PB. Subgenual functional "
    "connectivity predicts antidepressant treatment response to transcranial magnetic stimulation: "
    "independent validation and evaluation of personalization. Biol Psychiatry. 2019;86(2):e5-e7. "
    "doi:10.1016/j.biopsych.2018.12.002",
    "Cash2021": "Cash RFH, Cocchi L, Lv J, Wu Y, Fitzgerald PB, Zalesky A. Personalized connectivity-guided "
    "DLPFC-TMS for depression: advancing computational feasibility, precision and reproducibility. "
    "Hum Brain Mapp. 2021;42(13):4155-4172. doi:10.1002/hbm.25330",
    "MirMoghtadaei2015": "Mir-Moghtadaei A, Caballero R, Fried P, et al. Concordance between BeamF3 and "
    "MRI-neuronavigated target sites for repetitive transcranial magnetic stimulation of the left "
    "dorsolateral prefrontal cortex. Brain Stimul. 2015;8(5):965-973. doi:10.1016/j.brs.2015.05.008",
    "Ciric2017": "Ciric R, Wolf DH, Power JD, et al. Benchmarking of participant-level confound regression "
    "strategies for the control of motion artifact in studies of functional connectivity. Neuroimage. "
    "2017;154:174-187. doi:10.1016/j.neuroimage.2017.03.020",
    "Satterthwaite2013": "Satterthwaite TD, Elliott MA, Gerraty RT, et al. An improved framework for "
    "confound regression and filtering for control of motion artifact in the preprocessing of "
    "resting-state functional connectivity data. Neuroimage. 2013;64:240-256. "
    "doi:10.1016/j.neuroimage.2012.08.052",
    "Power2012": "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but systematic "
    "correlations in functional connectivity MRI networks arise from subject motion. Neuroimage. "
    "2012;59(3):2142-2154. doi:10.1016/j.neuroimage.2011.10.018",
    "Behzadi2007": "Behzadi Y, Restom K, Liau J, Liu TT. A component based noise correction method "
    "(CompCor) for BOLD and perfusion based fMRI. Neuroimage. 2007;37(1):90-101. "
    "doi:10.1016/j.neuroimage.2007.04.042",
    "Lindquist2019": "Lindquist MA, Geuter S, Wager TD, Caffo BS. Modular preprocessing pipelines can "
    "reintroduce artifacts into fMRI data. Hum Brain Mapp. 2019;40(8):2358-2376. doi:10.1002/hbm.24528",
    "Stokes2007": "Stokes MG, Chambers CD, Gould IC, et al. Distance-adjusted motor threshold for "
    "transcranial magnetic stimulation. Clin Neurophysiol. 2007;118(7):1617-1625. "
    "doi:10.1016/j.clinph.2007.04.004",
    "Bellec2010": "Bellec P, Rosa-Neto P, Lyttelton OC, Benali H, Evans AC. Multi-level bootstrap "
    "analysis of stable clusters in resting-state fMRI. Neuroimage. 2010;51(3):1126-1139. "
    "doi:10.1016/j.neuroimage.2010.02.082",
    "Lynch2020": "Lynch CJ, Power JD, Scult MA, Dubin M, Gunning FM, Liston C. Rapid precision "
    "functional mapping of individuals using multi-echo fMRI. Cell Rep. 2020;33(12):108540. doi:10.1016/j.celrep.2020.108540",
    "VanDijk2010": "Van Dijk KRA, Hedden T, Venkataraman A, Evans KC, Lazar SW, Buckner RL. Intrinsic "
    "functional connectivity as a tool for human connectomics: theory, properties, and optimization. "
    "J Neurophysiol. 2010;103(1):297-321. doi:10.1152/jn.00783.2009",
    "Deng2013": "Deng ZD, Lisanby SH, Peterchev AV. Electric field depth-focality tradeoff in "
    "transcranial magnetic stimulation: simulation comparison of 50 coil designs. Brain Stimul. "
    "2013;6(1):1-13. doi:10.1016/j.brs.2012.02.005",
    "Cole2020": "Cole EJ, Stimpson KH, Bentzley BS, et al. Stanford Accelerated Intelligent "
    "Neuromodulation Therapy for treatment-resistant depression. Am J Psychiatry. "
    "2020;177(8):716-726. doi:10.1176/appi.ajp.2019.19070720",
}

#: sgACC seed: 10 mm sphere (Fox et al. 2012; Cash et al. 2019, 2021).
SGACC_CENTER_MNI = (6.0, 16.0, -10.0)
SGACC_RADIUS_MM = 10.0

#: DLPFC sites whose 20 mm spheres make the search region (sites from Fox et al. 2012; their union used
#: as the search region by Cash et al. 2021 and ConTarg).
DLPFC_SITES_MNI = {
    "BA9": (-36.0, 39.0, 43.0),
    "BA46": (-44.0, 40.0, 29.0),
    "5cm": (-41.0, 16.0, 54.0),
    "BeamF3": (-37.0, 26.0, 49.0),
}
DLPFC_RADIUS_MM = 20.0

#: Group-optimal sgACC-anticorrelated site (Fox lab; Mir-Moghtadaei et al. 2015).
GROUP_OPTIMAL_MNI = (-38.0, 44.0, 26.0)

#: Named confound strategies: arguments of nilearn.interfaces.fmriprep.load_confounds.
#: ``gsr`` is the default: 24 motion parameters + WM + CSF + global signal with their temporal
#: derivatives (Fox et al. 2012 regressed the global signal; 24P expansion: Satterthwaite et al. 2013).
CONFOUND_STRATEGIES = {
    "gsr": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "full",
        "wm_csf": "derivatives",
        "global_signal": "derivatives",
        "description": "24 motion parameters, white matter, CSF and global signal with temporal "
        "derivatives (30 regressors)",
        "references": ["Fox2012", "Satterthwaite2013", "Ciric2017"],
    },
    "nogsr": {
        "strategy": ("motion", "wm_csf"),
        "motion": "full",
        "wm_csf": "derivatives",
        "description": "24 motion parameters, white matter and CSF with temporal derivatives "
        "(28 regressors), no global signal regression",
        "references": ["Satterthwaite2013", "Ciric2017"],
    },
    "acompcor": {
        "strategy": ("motion", "high_pass", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": 5,
        "description": "24 motion parameters, fMRIPrep's discrete cosine high-pass basis and the first 5 "
        "anatomical CompCor components of the combined WM+CSF mask",
        "references": ["Behzadi2007", "Ciric2017"],
    },
    "none": {
        "strategy": (),
        "description": "no confound regression (band-pass filtering and smoothing only); for comparison, "
        "not for treatment",
        "references": [],
    },
}

TARGET_METHODS = {
    "cluster": "the most negative 10 % of search-region voxels, 26-connected clusters, the largest cluster, "
    "its |z|-weighted centroid snapped to the nearest grey-matter voxel of the search region "
    "(Cash et al. 2021; ConTarg)",
    "snt": "Stanford Neuromodulation Therapy style (Cole et al. 2020): the same candidate voxels (most "
    "negative 10 %) clustered hierarchically (complete linkage, clusters at most 20 mm wide), clusters "
    "ranked by size, spatial concentration and net anticorrelation, the best cluster's |z|-weighted "
    "centroid snapped to the nearest grey-matter voxel of the search region",
    "peak": "the most negative voxel of the search region",
}

#: Widest cluster of the ``snt`` method (mm): about the cortical focal spot of a figure-8 coil,
#: which is of the order of a centimetre or two across (Deng et al. 2013).
SNT_CLUSTER_DIAMETER_MM = 20.0

#: Reliability grades, best first: the first whose two limits (mm) the target meets. The limits
#: compare the target's uncertainty with the coil's focal spot, about 1 cm in radius (Deng et al.
#: 2013): within half of it the uncertainty is negligible; beyond it the coil may miss the site.
#: Split halves use half the data each, so they are allowed twice the bootstrap radius. None: no limit.
RELIABILITY_GRADES = {
    "high": {"Radius95_mm": 5.0, "SplitHalfDistance_mm": 10.0,
             "Meaning": "the target is stable to well within the coil's focal spot"},
    "moderate": {"Radius95_mm": 10.0, "SplitHalfDistance_mm": 20.0,
                 "Meaning": "the target is stable to about the coil's focal spot; more data would help"},
    "low": {"Radius95_mm": None, "SplitHalfDistance_mm": None,
            "Meaning": "the target is uncertain by more than the coil's focal spot: acquire more (or "
            "multi-echo) resting-state data before using it (Cash et al. 2021; Lynch et al. 2020)"},
}

# -- Defaults of the processing parameters (the command line's, and the graph factory's keyword
# arguments). Each with its source; the sidecars record the values used.

#: Confound strategy (a key of CONFOUND_STRATEGIES).
CONFOUNDS = "gsr"
#: Framewise-displacement censoring threshold (mm); None: no censoring (Power et al. 2012 use 0.5 mm).
FD_THRESHOLD_MM = None
#: Retained time a run needs to be used (s): XCP-D's --min-time default.
MIN_TIME_S = 240.0
#: Retained time all used runs need together (s): connectivity stabilizes from ~5 min (Van Dijk 2010).
MIN_TOTAL_TIME_S = 300.0
#: Band-pass (Hz): the conventional resting-state band of the design's denoising default.
HIGH_PASS_HZ = 0.01
LOW_PASS_HZ = 0.1
#: Spatial smoothing, FWHM (mm): the design's denoising default.
SMOOTHING_FWHM_MM = 6.0
#: Seed name used in file names (desc-<name>).
SEED_NAME = "sgACC"

#: The spaces tmstarget computes in: fMRIPrep's two MNI templates (the published coordinates above
#: are used as they are in both; they differ by a few mm at most) and the participant's T1w.
MNI_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
SPACES = MNI_SPACES + ("T1w",)
#: The template the seed and search regions are placed in: a T1w computation maps them with
#: fMRIPrep's transforms between the T1w and this template.
REGIONS_SPACE = "MNI152NLin2009cAsym"
#: Target selection (a key of TARGET_METHODS) and its share of the most negative voxels (%).
TARGET_METHOD = "cluster"
CLUSTER_PERCENTILE = 10.0
#: Grey-matter probability above which a voxel is grey matter.
GM_THRESHOLD = 0.5
#: Block bootstrap of the target: samples (0 skips it), block length (s) (Bellec et al. 2010), seed.
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_BLOCK_S = 30.0
RANDOM_SEED = 0
#: Coil handle angle from the midline (degrees), handle pointing posterior-lateral: the clinical
#: default for the left DLPFC.
HANDLE_ANGLE_DEG = 45.0
#: Default coil current slope: 1 A/us, SimNIBS's default dI/dt (1e6 A/s). Fields scale linearly.
DEFAULT_DIDT_A_PER_US = 1.0
#: The pose of the plan unless asked otherwise (``--coil-orientation``): the clinical handle angle,
#: how coils are placed today; the field's pose is reported beside it either way.
DEFAULT_COIL_ORIENTATION = "clinical"

#: The E-field model's literature (:mod:`tmstarget.workflows.efield`; its sidecars and the README).
EFIELD_REFERENCES = {
    "Eaton1992": "Eaton H. Electric field induced in a spherical volume conductor from arbitrary "
    "coils: application to magnetic stimulation and MEG. Med Biol Eng Comput. "
    "1992;30(4):433-440. doi:10.1007/BF02446182",
    "HellerVanHulsteyn1992": "Heller L, van Hulsteyn DB. Brain stimulation using electromagnetic "
    "sources: theoretical aspects. Biophys J. 1992;63(1):129-138. "
    "doi:10.1016/S0006-3495(92)81587-4",
    "Deng2013": "Deng ZD, Lisanby SH, Peterchev AV. Electric field depth-focality tradeoff in "
    "transcranial magnetic stimulation: simulation comparison of 50 coil designs. Brain Stimul. "
    "2013;6(1):1-13. doi:10.1016/j.brs.2012.02.005",
    "Thielscher2015": "Thielscher A, Antunes A, Saturnino GB. Field modeling for transcranial "
    "magnetic stimulation: a useful tool to understand the physiological effects of TMS? Conf "
    "Proc IEEE Eng Med Biol Soc. 2015:222-225. doi:10.1109/EMBC.2015.7318340",
    "Thielscher2011": "Thielscher A, Opitz A, Windhoff M. Impact of the gyral geometry on the "
    "electric field induced by transcranial magnetic stimulation. NeuroImage. "
    "2011;54(1):234-243. doi:10.1016/j.neuroimage.2010.07.061",
    "Gomez2020": "Gomez LJ, Dannhauer M, Koponen LM, Peterchev AV. Conditions for numerically "
    "accurate TMS electric field simulation. Brain Stimul. 2020;13(1):157-166. "
    "doi:10.1016/j.brs.2019.09.015",
    "Stokes2007": "Stokes MG, Chambers CD, Gould IC, et al. Distance-adjusted motor threshold "
    "for transcranial magnetic stimulation. Clin Neurophysiol. 2007;118(7):1617-1625. "
    "doi:10.1016/j.clinph.2007.04.004",
    "Nummenmaa2013": "Nummenmaa A, Stenroos M, Ilmoniemi RJ, Okada YC, Hamalainen MS, Raij T. "
    "Comparison of spherical and realistically shaped boundary element head models for "
    "transcranial magnetic stimulation navigation. Clin Neurophysiol. 2013;124(10):1995-2007. "
    "doi:10.1016/j.clinph.2013.04.019",
}
