"""Confound regression: fMRIPrep confounds through nilearn, band-pass, smoothing, censoring.

The BOLD run is read once, a few volumes at a time: each chunk is smoothed (only the mask's
bounding box) and masked into a float32 (volumes x mask voxels) array, so the 4-D image never sits
in memory. nilearn's whole temporal cleaning is then one matrix product (:func:`cleaning_matrix`).
The cleaned array is handed to the next nodes as an uncompressed ``.npy`` file (memory-mapped by
its readers).
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np
from nilearn import signal
from nilearn.interfaces.fmriprep import load_confounds
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage

from tmstarget.workflows.defaults import CONFOUND_STRATEGIES
from tmstarget.workflows.parallel import can_fork, run_parts, shared_array
from tmstarget.workflows.seed_quality import RawMoments

try:  # ISA-L decompresses gzip about twice as fast as zlib; the standard library otherwise.
    from isal import igzip as _gzip
    from isal import igzip_threaded as _gzip_threaded
except ImportError:  # pragma: no cover - isal is a dependency, kept optional for slim installs
    _gzip, _gzip_threaded = gzip, None

LOGGER = logging.getLogger("tmstarget")

#: Volumes read, smoothed and masked at a time: at 2 mm the chunk buffers (about 10 MB) stay in
#: the CPU's cache through the conversion, the three Gaussian passes and the masking, which is
#: about 20 % less CPU than chunks of 16 volumes (100 MB); the values are the same.
CHUNK_VOLUMES = 2

#: Size of the carpet-plot sample of voxels (evenly spaced among the mask voxels).
CARPET_VOXELS = 3000

#: Values (retained volumes x voxels) cleaned by one matrix product (:func:`apply_cleaning`): a
#: temporary of 16 MB, written back over the series it was computed from. Large enough that each
#: block's product takes BLAS's path for large matrices, as the whole product would: OpenBLAS
#: computes small products with kernels that round differently (measured: 0.7 million
#: multiply-adds rounded differently, 1.0 million did not).
CLEANING_BLOCK_VALUES = 2**22

#: Chunks the decompressing process may run ahead of the slowest slab's process (a ring of
#: shared chunks, about 4 MB each at 2 mm: see :func:`_shared_read_parts`).
RING_CHUNKS = 4


def _open_data(path, threads=1):
    """A binary stream of a NIfTI file, decompressed by ISA-L when gzipped.

    With ``threads`` > 1 the decompression runs in a background thread (ISA-L releases the GIL),
    overlapping the smoothing of the previous chunk.
    """
    path = str(path)
    if not path.endswith(".gz"):
        return open(path, "rb")
    if threads > 1 and _gzip_threaded is not None:
        return _gzip_threaded.open(path, "rb", threads=1)
    return _gzip.open(path, "rb")


def thread_budget():
    """Threads this process may use: ``--omp-nthreads``, which the CLI sets as OMP_NUM_THREADS."""
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "1")), 1)
    except ValueError:
        return 1


def smoothing_sigmas(affine, fwhm):
    """Gaussian sigma per voxel axis, in voxels, for a FWHM in mm (nilearn's conversion).

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine (mm).
    fwhm : float
        Full width at half maximum, mm.
    """
    voxel_size = np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
    return fwhm / (np.sqrt(8 * np.log(2)) * voxel_size)


def read_masked_bold(bold_file, mask, smoothing_fwhm=None, chunk_volumes=CHUNK_VOLUMES, threads=1,
                     raw_moments=None, processes=1):
    """Read a 4-D BOLD run once into a float32 (volumes x mask voxels) array, smoothing on the way.

    Equal, up to float32 rounding, to nilearn's ``masking.apply_mask(bold_file, mask, dtype="f",
    smoothing_fwhm=fwhm)``, which loads and smooths the whole 4-D image (about 4 GB at 2 mm and
    300 volumes). Here the file is decompressed as a stream (nibabel reads the header, ISA-L the
    data) a chunk of volumes at a time, and each chunk is smoothed only inside the mask's bounding
    box grown by the kernel radius: the masked values need nothing beyond it. Where the box meets
    the image edge it is the edge, so scipy's "reflect" boundary (nilearn's) is kept.

    With ``processes`` > 1 the mask is cut along x into that many slabs of about equal voxel
    counts, each smoothed and masked by its own forked process
    (:func:`tmstarget.workflows.parallel.run_parts`) over the slab grown by the x kernel radius,
    from chunks that one more process decompresses once into shared memory
    (:func:`_shared_read_parts`). scipy smooths each line on its own, so the values are the ones a
    single process gives, byte for byte (tested).

    Parameters
    ----------
    bold_file : str or Path
        4-D NIfTI (gzipped or not).
    mask : ndarray of bool, shape of the BOLD's first three axes
    smoothing_fwhm : float or None
        Gaussian FWHM in mm; ``None`` or 0 does not smooth.
    chunk_volumes : int
        Volumes decompressed and smoothed at a time.
    threads : int
        With 2 or more, the decompressing process decompresses in a background thread.
    raw_moments : tmstarget.workflows.seed_quality.RawMoments or None
        Also given each chunk before smoothing (the seed quality's raw BOLD), then the mask voxels.
    processes : int
        Processes that share the work (where the system can fork; else one).

    Returns
    -------
    ndarray of shape (n_volumes, mask.sum()), float32
        Mask voxels in numpy C order of the mask array. Non-finite values outside the mask are
        set to 0 before smoothing (nilearn's ``ensure_finite``).

    Raises
    ------
    ValueError
        When a brain voxel holds a NaN or infinite value, or the file is truncated.
    """
    img = nb.load(bold_file)
    shape = img.shape
    mask = np.asarray(mask, dtype=bool)
    if len(shape) != 4 or shape[:3] != mask.shape:
        raise ValueError(f"{bold_file}: a 4-D BOLD on the grid of its brain mask {mask.shape} was "
                         f"expected, not shape {shape}; give the mask of the same space and run")
    # nibabel's array proxy knows where the data start and how they are scaled.
    proxy = img.dataobj
    if getattr(proxy, "order", "F") != "F":
        raise ValueError(f"{bold_file}: not a NIfTI image (data order {proxy.order}); give the "
                         "fMRIPrep desc-preproc_bold.nii.gz")
    n_volumes, n_voxels = shape[3], int(mask.sum())
    sigmas_zyx = smoothing_sigmas(img.affine, smoothing_fwhm)[::-1] if smoothing_fwhm else None
    # The mask voxels in C order of the mask run along x slowest, so a slab of x is a block of
    # output columns: each part writes its own columns of one shared array.
    columns_before_x = np.concatenate([[0], np.cumsum(mask.sum(axis=(1, 2)))])
    slabs = _x_slabs(columns_before_x, processes if can_fork() else 1)
    out = shared_array((n_volumes, n_voxels), np.float32) if len(slabs) > 1 else np.empty(
        (n_volumes, n_voxels), dtype=np.float32)
    retained = raw_moments.retained if raw_moments is not None else None

    def read_slab(x_range, chunks):
        columns = slice(int(columns_before_x[x_range[0]]), int(columns_before_x[x_range[1]]))
        return _read_slab(bold_file, proxy, mask, x_range, sigmas_zyx, out[:, columns],
                          chunk_volumes, chunks, retained)

    if len(slabs) == 1:
        moments = [read_slab(slabs[0], _stream_chunks(bold_file, proxy, chunk_volumes, threads))]
    else:
        moments = _shared_read_parts(bold_file, proxy, chunk_volumes, threads,
                                     [functools.partial(read_slab, x_range) for x_range in slabs])
    if raw_moments is not None:
        raw_moments.concatenate(moments)
    return out


def _x_slabs(columns_before_x, processes):
    """``processes`` ranges of x, [start, stop), holding about equal numbers of mask voxels."""
    n_voxels = columns_before_x[-1]
    if processes <= 1 or n_voxels == 0:
        return [(0, len(columns_before_x) - 1)]
    cuts = np.searchsorted(columns_before_x, np.linspace(0, n_voxels, processes + 1)[1:-1])
    edges = [0, *sorted(set(int(c) for c in cuts) - {0, len(columns_before_x) - 1}),
             len(columns_before_x) - 1]
    return [(start, stop) for start, stop in zip(edges[:-1], edges[1:])
            if columns_before_x[stop] > columns_before_x[start]]


def _stream_chunks(bold_file, proxy, chunk_volumes, threads, place=None):
    """The BOLD decompressed ``chunk_volumes`` at a time: ``(first volume, raw chunk)`` pairs.

    A raw chunk is (volumes, z, y, x), file order and type. ``place(k)`` gives the contiguous
    (``chunk_volumes``, z, y, x) array chunk ``k`` is decompressed into; by default one buffer,
    reused for every chunk.
    """
    n_volumes = proxy.shape[3]
    if place is None:
        buffer = np.empty((chunk_volumes,) + tuple(proxy.shape[:3])[::-1], dtype=proxy.dtype)

        def place(k):
            return buffer

    with reading(bold_file), _open_data(bold_file, threads) as stream:
        _read_exactly(stream, np.empty(int(proxy.offset), dtype=np.uint8), bold_file)  # header
        for k, start in enumerate(range(0, n_volumes, chunk_volumes)):
            raw = place(k)[:min(chunk_volumes, n_volumes - start)]
            _read_exactly(stream, raw, bold_file)
            yield start, raw


class _ReadStopped(Exception):
    """The other side of the shared read ended early (its own error is the read's).

    Raised inside a process of :func:`_shared_read_parts`, which then returns the class itself
    as its result (pickled by reference, so ``is`` holds in the parent) rather than an error
    that would hide the one that stopped the read.
    """


def _shared_read_parts(bold_file, proxy, chunk_volumes, threads, readers):
    """Decompress the BOLD once for several processes: the results of ``readers``, in order.

    One process (this one) decompresses the stream chunk by chunk into a ring of
    :data:`RING_CHUNKS` chunks in shared memory; each reader, in a forked process, is given the
    chunks in order (as :func:`_stream_chunks` gives them) and reads them in place. Each reading
    process decompressing the whole stream itself cost 1.5-1.8 s of CPU per process at 2 mm.

    The processes tell each other through pipes: one byte from the writer to each reader when a
    chunk is in, one byte back when the reader is done with it, so the writer refills a chunk of
    the ring only once every reader is done with it. A process that ends, by an error or killed,
    closes its pipes: the others see the end of the file and stop rather than wait, and the
    error raised is the one of the process that failed (:func:`run_parts`).

    Parameters
    ----------
    readers : list of callable
        Each takes an iterable of ``(first volume, raw chunk)`` and returns its result.
    """
    n_volumes = proxy.shape[3]
    starts = range(0, n_volumes, chunk_volumes)
    ring = shared_array((RING_CHUNKS, chunk_volumes) + tuple(proxy.shape[:3])[::-1], proxy.dtype)
    # filled[c]: the writer tells reader c that a chunk is in; freed[c]: reader c tells the
    # writer it is done with one. Each process keeps only its own ends.
    filled = [os.pipe() for _ in readers]
    freed = [os.pipe() for _ in readers]
    opened = {fd for pair in filled + freed for fd in pair}

    closed_here = []  # whether this process closed the ends it does not keep

    def keep(ends):
        for fd in opened - set(ends):
            os.close(fd)
        closed_here.append(True)
        return ends

    def free_place(k):
        """The ring's place for chunk k, once every reader is done with the chunk it held."""
        if k >= RING_CHUNKS and not all(os.read(r, 1) for r, _ in freed):
            raise _ReadStopped  # a reader ended early
        return ring[k % RING_CHUNKS]

    def write():
        ends = keep([w for _, w in filled] + [r for r, _ in freed])
        try:
            for _ in _stream_chunks(bold_file, proxy, chunk_volumes, threads, free_place):
                for _, w in filled:  # a chunk is in
                    os.write(w, b"\0")
        except (_ReadStopped, BrokenPipeError):  # a reader ended early: its error is the read's
            return _ReadStopped
        finally:
            for fd in ends:
                os.close(fd)
        return None

    def chunks(c):
        for k, start in enumerate(starts):
            if not os.read(filled[c][0], 1):
                raise _ReadStopped
            yield start, ring[k % RING_CHUNKS, :min(chunk_volumes, n_volumes - start)]
            if k + RING_CHUNKS < len(starts):  # the writer waits for it to refill the chunk
                os.write(freed[c][1], b"\0")

    def read(c):
        ends = keep([filled[c][0], freed[c][1]])
        try:
            return readers[c](chunks(c))
        except (_ReadStopped, BrokenPipeError):
            return _ReadStopped
        finally:
            for fd in ends:
                os.close(fd)

    try:
        results = run_parts([write, *(functools.partial(read, c) for c in range(len(readers)))])
    except BaseException:
        if not closed_here:  # the parts never began: this process's copies are all open
            for fd in opened:
                os.close(fd)
        raise
    if any(result is _ReadStopped for result in results):  # a stop without an error: never expected
        raise RuntimeError(f"{bold_file}: the shared read stopped early without an error")
    return results[1:]


def _read_slab(bold_file, proxy, mask, x_range, sigmas_zyx, out, chunk_volumes, chunks, retained):
    """Smooth and mask the voxels of x in ``x_range`` into ``out`` (volumes x their voxels).

    ``chunks`` gives the raw BOLD (:func:`_stream_chunks`). Returns the voxels'
    :class:`RawMoments` (of the ``retained`` volumes) or None.
    """
    dtype = np.dtype(proxy.dtype)
    slope, inter = float(proxy.slope), float(proxy.inter)
    # NIfTI stores x fastest: in file order a volume is a C-order (z, y, x) array.
    mask_zyx = mask.T
    slab_zyx = np.zeros_like(mask_zyx)
    slab_zyx[..., x_range[0]:x_range[1]] = mask_zyx[..., x_range[0]:x_range[1]]
    box = [slice(0, n) for n in mask_zyx.shape]
    if sigmas_zyx is not None and slab_zyx.any():
        radius = [int(4.0 * sigma + 0.5) for sigma in sigmas_zyx]  # scipy's truncate=4
        # y and z: the whole mask's extent (the box of a single process); x: the slab's.
        extents = [np.nonzero(mask_zyx.any(axis=(1, 2)))[0], np.nonzero(mask_zyx.any(axis=(0, 2)))[0],
                   np.nonzero(slab_zyx.any(axis=(0, 1)))[0]]
        box = [slice(max(int(w.min()) - r, 0), min(int(w.max()) + 1 + r, n))
               for w, r, n in zip(extents, radius, mask_zyx.shape)]
    box_mask = slab_zyx[tuple(box)]
    passes = smoothing_passes(box_mask, sigmas_zyx) if sigmas_zyx is not None else []
    # Masking in file order gives the voxels in Fortran order of the mask: the flat positions in
    # the box, reordered to the C order of the mask, make masking one gather (np.take).
    slab = np.zeros(mask.shape, dtype=bool)
    slab[x_range[0]:x_range[1]] = mask[x_range[0]:x_range[1]]
    c_rank = np.zeros(mask.shape, dtype=np.int64)
    c_rank[slab] = np.arange(int(slab.sum()))
    gather = np.flatnonzero(box_mask)[np.argsort(c_rank.T[tuple(box)][box_mask])]

    raw_moments = RawMoments(retained) if retained is not None else None
    chunk = np.empty((chunk_volumes,) + box_mask.shape, dtype=np.float32)
    for start, raw in chunks:
        count = len(raw)
        block = chunk[:count]
        if slope != 1.0:  # cast and scale in one pass (the same float32 operations)
            np.multiply(raw[(slice(None),) + tuple(box)], np.float32(slope), out=block)
        else:
            block[...] = raw[(slice(None),) + tuple(box)]
        if inter != 0.0:
            block += np.float32(inter)
        if dtype.kind == "f" and not np.isfinite(block).all():
            # Inside the brain a non-finite value is an error (smoothing would spread or, as
            # nilearn's ensure_finite does, hide it); outside it is zeroed, as nilearn does.
            non_finite = ~np.isfinite(block)
            bad_voxels = int(non_finite[:, box_mask].any(axis=0).sum())
            if bad_voxels:
                raise ValueError(non_finite_message(bold_file, bad_voxels))
            block[non_finite] = 0
        if raw_moments is not None:  # the raw (unsmoothed) BOLD, for the seed quality
            raw_moments.add(start, block.reshape(count, -1))
        for axis, sigma, where in passes:
            view = block[where]
            ndimage.gaussian_filter1d(view, sigma, axis=axis, output=view)
        np.take(block.reshape(count, -1), gather, axis=1, out=out[start:start + count])
    if raw_moments is not None:
        raw_moments.select(gather)
    return raw_moments


def smoothing_passes(box_mask, sigmas_zyx):
    """The separable Gaussian passes of a chunk, each over only the part a later step reads.

    nilearn smooths with 1-D passes along x, then y, then z. After the x pass nothing mixes
    voxels along x any more, so the y and z passes need only the x positions of the mask, and
    the z pass only its x and y positions; each pass still runs over whole lines along its own
    axis, so every value it computes is the one the whole box would give (scipy computes each
    line on its own), and the masked values are byte-identical (tested). About a fifth of the
    box is skipped on a brain mask.

    Parameters
    ----------
    box_mask : ndarray of bool, shape (z, y, x)
        The mask inside the chunk's box (file order, x fastest).
    sigmas_zyx : sequence of 3 floats
        Gaussian sigma per axis, voxels, in (z, y, x) order.

    Returns
    -------
    list of (axis, sigma, index)
        The chunk axis (1 z, 2 y, 3 x of a (volumes, z, y, x) chunk), its sigma, and the
        index of the chunk view to smooth in place, in the order to apply them.
    """
    where = np.nonzero(box_mask)
    inner = [slice(int(w.min()), int(w.max()) + 1) if w.size else slice(0, 0) for w in where]
    view = [slice(None)] * 4
    passes = []
    for axis, sigma in zip((3, 2, 1), np.asarray(sigmas_zyx)[::-1]):
        if sigma > 0:
            passes.append((axis, float(sigma), tuple(view)))
        # the axes smoothed so far are not mixed again: only the mask's extent is read on
        view[axis] = inner[axis - 1]
    return passes


def _read_exactly(stream, array, name):
    """Fill ``array`` from ``stream``; a truncated file is an error naming it."""
    view = memoryview(array.reshape(-1).view(np.uint8))
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])
        if not got:
            raise ValueError(f"{name} is truncated ({filled} of {len(view)} bytes of a chunk read): "
                             "re-run fMRIPrep or copy the file again")
        filled += got


def confound_regressors(bold_file, strategy_name, fd_threshold=None):
    """Select fMRIPrep confounds for ``bold_file`` with nilearn's ``load_confounds``.

    Parameters
    ----------
    bold_file : str
        fMRIPrep ``desc-preproc_bold`` file; its ``desc-confounds_timeseries.tsv`` (+ ``.json``) is
        found beside it by fMRIPrep's naming.
    strategy_name : str
        A key of :data:`tmstarget.workflows.defaults.CONFOUND_STRATEGIES`.
    fd_threshold : float or None
        Framewise displacement (mm) above which volumes are censored; ``None`` censors nothing.
        Segments of fewer than 5 retained volumes are censored too (Power et al. 2014).

    Returns
    -------
    confounds : ndarray of shape (n_volumes, n_regressors) or None
    sample_mask : ndarray of int
        Indices of the volumes kept: non-steady-state volumes (fMRIPrep's
        ``non_steady_state_outlier*`` columns) are always dropped.
    names : list of str
        The regressor names.
    """
    spec = {k: v for k, v in CONFOUND_STRATEGIES[strategy_name].items()
            if k not in ("description", "references")}
    strategy = tuple(spec.pop("strategy"))
    if fd_threshold is not None:
        # FD-only censoring, as DESIGN.md specifies: DVARS never censors.
        strategy += ("scrub",)
        spec.update(fd_threshold=float(fd_threshold), std_dvars_threshold=np.inf, scrub=5)
    n_volumes = nb.load(bold_file).shape[-1]
    if not strategy:
        # load_confounds always reads the non-steady-state outliers; with an empty strategy it
        # returns no confounds, so ask for the motion table and keep only its sample mask.
        _, sample_mask = load_confounds(bold_file, strategy=("motion",), motion="basic")
        confounds = None
    else:
        confounds, sample_mask = load_confounds(bold_file, strategy=strategy, **spec)
    if sample_mask is None:
        sample_mask = np.arange(n_volumes)
    if confounds is None or confounds.shape[1] == 0:
        return None, np.asarray(sample_mask, dtype=int), []
    return (confounds.to_numpy(dtype=np.float64), np.asarray(sample_mask, dtype=int),
            list(confounds.columns))


@contextmanager
def reading(path):
    """Turn a failure to read the data of ``path`` into a one-line error naming the file.

    A ``.nii.gz`` cut short (an interrupted copy) has a valid header, so it passes the collection
    checks and fails only here, when its data are decompressed.
    """
    try:
        yield
    except (EOFError, zlib.error, OSError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}): the file is truncated "
                         "or corrupt; copy it again from the fMRIPrep outputs") from None


def non_finite_message(bold_file, n_voxels):
    """The error for NaN or infinite BOLD values in ``n_voxels`` brain voxels."""
    return (f"{bold_file} has NaN or infinite values ({n_voxels} brain voxels affected): the "
            "preprocessing failed; rerun fMRIPrep for this run or exclude it with --bids-filter-file")


def check_timeseries(timeseries, bold_file):
    """Refuse BOLD data that would give a target without meaning.

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
        The masked BOLD, any units.
    bold_file : str
        Its file, named in the error.

    Raises
    ------
    ValueError
        When any value is NaN or infinite (a correlation with it is undefined), when every value
        is zero, or when no brain voxel varies in time (a constant BOLD has no connectivity).
    """
    # Two reductions over time and no full-size temporary: NaN and inf propagate into min and max.
    lowest, highest = timeseries.min(axis=0), timeseries.max(axis=0)
    bad_voxels = int((~(np.isfinite(lowest) & np.isfinite(highest))).sum())
    if bad_voxels:
        raise ValueError(non_finite_message(bold_file, bad_voxels))
    if not (lowest.any() or highest.any()):
        raise ValueError(f"{bold_file} is all zeros inside its brain mask: the file is empty or "
                         "was overwritten; copy it again from the fMRIPrep outputs")
    if not (highest > lowest).any():
        raise ValueError(f"{bold_file} does not vary in time in any brain voxel (a constant image): "
                         "it holds no connectivity; check that it is the desc-preproc_bold time series")


def cleaning_matrix(n_volumes, confounds, sample_mask, t_r, high_pass=0.01, low_pass=0.1):
    """nilearn's temporal cleaning of ``n_volumes`` volumes as one (retained x volumes) matrix.

    Every step of nilearn's ``signal.clean`` before its final z-score is linear in the data:
    censored volumes are interpolated by a cubic spline of the retained ones, then the data are
    detrended, Butterworth band-passed, censored, and projected out of the (equally filtered,
    Lindquist et al. 2019) confounds. With the confounds fixed, the whole chain is a matrix ``P``,
    and ``P`` is what ``signal.clean`` returns for the identity: column ``j`` is the cleaned
    response to a unit impulse at volume ``j``. Cleaning a (volumes x voxels) array is then one
    matrix product, ``P @ X``, equal to ``signal.clean(X)`` up to floating-point rounding, at the
    cost of nilearn cleaning ``n_volumes`` columns instead of every voxel.

    Parameters
    ----------
    n_volumes : int
        Volumes of the run, including the dropped ones.
    confounds : ndarray of shape (n_volumes, n_regressors) or None
    sample_mask : ndarray of int
        Indices of the volumes to keep.
    t_r : float
        Repetition time in seconds.
    high_pass, low_pass : float or None
        Band-pass edges in Hz.

    Returns
    -------
    ndarray of shape (len(sample_mask), n_volumes), float64
    """
    sample_mask = np.asarray(sample_mask)
    identity = np.eye(n_volumes)
    if sample_mask.size and np.array_equal(sample_mask, np.arange(sample_mask[0], sample_mask[-1] + 1)):
        # Only leading/trailing volumes dropped (non-steady state): nilearn would cut them off
        # rather than interpolate, so cut them here and skip its spline interpolation.
        identity = identity[sample_mask]
        confounds = None if confounds is None else np.asarray(confounds)[sample_mask]
        sample_mask = None
    return signal.clean(
        identity,
        detrend=True,
        standardize=None,
        confounds=confounds,
        standardize_confounds=True,
        sample_mask=sample_mask,
        filter="butterworth",
        high_pass=high_pass,
        low_pass=low_pass,
        t_r=t_r,
        butterworth__copy=True,  # one vectorized filter call over all the columns
    )


def apply_cleaning(matrix, timeseries):
    """Clean voxel time series with a :func:`cleaning_matrix` and z-score each voxel.

    Parameters
    ----------
    matrix : ndarray of shape (n_retained, n_volumes)
        From :func:`cleaning_matrix`.
    timeseries : ndarray of shape (n_volumes, n_voxels), float32, C-contiguous
        Voxel time series, any units. Overwritten: the cleaned series take its memory.

    Returns
    -------
    ndarray of shape (n_retained, n_voxels), float32
        Each voxel with zero mean and unit sample variance, nilearn's ``zscore_sample`` (a voxel
        whose standard deviation is below float64 eps is left unscaled). Its first
        ``n_retained`` rows: a view of ``timeseries``' memory.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n_retained, n_volumes = matrix.shape
    if timeseries.shape[0] != n_volumes or not timeseries.flags.c_contiguous:
        raise ValueError(f"apply_cleaning needs a C-contiguous ({n_volumes}, voxels) array, "
                         f"got {timeseries.shape}")
    # The product runs in float32: subtract each voxel's mean first, so that rounding is
    # relative to the fluctuations (about 1 %) rather than to the baseline, and add back the
    # matrix's response to a constant (zero whenever the cleaning detrends).
    means = timeseries.mean(axis=0, dtype=np.float64).astype(np.float32)
    timeseries -= means
    # One product per block of voxels, written back into the columns it has just read: the run
    # holds one (volumes x voxels) array instead of two (280 MB fewer at 300 volumes of 236 000
    # voxels). Each value is computed from its row and column alone, and equals one whole
    # product's to float32 rounding (tested), not always to the bit: on some CPUs OpenBLAS
    # rounds part of a product's columns differently depending on the product's width (its
    # Haswell kernels: about a tenth of the columns of 1000-voxel blocks, by up to 5e-6 in
    # z-scores). The blocks are the same whatever --nprocs, so a machine gives the same bytes
    # every time. The last block takes the rest, so that no product is of a few voxels only.
    matrix32 = matrix.astype(np.float32)
    cleaned = timeseries[:n_retained]
    n_voxels = timeseries.shape[1]
    block = max(CLEANING_BLOCK_VALUES // max(n_retained, 1), 1)
    edges = [*range(0, max(n_voxels // block, 1) * block, block), n_voxels]
    for start, stop in zip(edges[:-1], edges[1:]):
        cleaned[:, start:stop] = matrix32 @ timeseries[:, start:stop]
    constant_response = matrix.sum(axis=1)
    if np.abs(constant_response).max(initial=0.0) > 1e-6:
        cleaned += np.outer(constant_response, means).astype(np.float32)
    # nilearn's zscore_sample, in place (signal.standardize_signal would copy the array twice).
    cleaned -= cleaned.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = np.sqrt(np.einsum("ij,ij->j", cleaned, cleaned, dtype=np.float64)
                  / max(cleaned.shape[0] - 1, 1))
    std[std < np.finfo(np.float64).eps] = 1.0
    cleaned *= (1.0 / std).astype(np.float32)
    return cleaned


def denoise(timeseries, confounds, sample_mask, t_r, high_pass=0.01, low_pass=0.1):
    """Regress confounds, band-pass filter, censor and standardize voxel time series.

    Confounds are filtered like the data (Lindquist et al. 2019) and the regression is fit on the
    retained volumes only; censored volumes are interpolated before filtering and then removed:
    nilearn's ``signal.clean``, applied as one matrix product (:func:`cleaning_matrix`).

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_voxels)
        Voxel time series, any units (not modified).
    confounds : ndarray of shape (n_volumes, n_regressors) or None
    sample_mask : ndarray of int
        Indices of the volumes to keep.
    t_r : float
        Repetition time in seconds.
    high_pass, low_pass : float or None
        Band-pass edges in Hz.

    Returns
    -------
    ndarray of shape (len(sample_mask), n_voxels), float32
        Cleaned time series, each voxel with zero mean and unit sample variance (constant voxels
        stay zero).
    """
    timeseries = np.array(timeseries, dtype=np.float32, order="C")  # a copy: apply_cleaning overwrites it
    matrix = cleaning_matrix(timeseries.shape[0], confounds, sample_mask, t_r, high_pass, low_pass)
    return apply_cleaning(matrix, timeseries)


def degrees_of_freedom(n_retained, n_regressors, t_r, high_pass, low_pass):
    """Degrees of freedom left after band-pass and regression (a simple, conservative count).

    A band-pass keeps the fraction ``2 * TR * (low_pass - high_pass)`` of the spectrum's independent
    frequencies; each regressor removes one more. A guide for data sufficiency, not an exact figure.
    """
    nyquist = 0.5 / t_r
    upper = min(low_pass or nyquist, nyquist)
    kept_fraction = (upper - (high_pass or 0.0)) / nyquist
    return float(n_retained * kept_fraction - n_regressors - 1)


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="fMRIPrep preprocessed BOLD")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    t_r = traits.Float(mandatory=True, desc="repetition time (s)")
    strategy = traits.Str("gsr", usedefault=True)
    fd_threshold = traits.Either(None, traits.Float, usedefault=True)
    high_pass = traits.Float(0.01, usedefault=True)
    low_pass = traits.Float(0.1, usedefault=True)
    smoothing_fwhm = traits.Float(6.0, usedefault=True)
    # not hashed: the values are the same for any number, so a resumed run reuses the step
    processes = traits.Int(1, usedefault=True, nohash=True,
                           desc="processes that read and smooth the BOLD (the same values for any number)")


class _DenoiseOutputSpec(TraitedSpec):
    cleaned_file = File(exists=True, desc="float32 (retained volumes x mask voxels) .npy")
    info_file = File(exists=True, desc="JSON: volumes, retained volumes, regressors, dof")
    carpet_file = File(exists=True, desc="carpet.npz: raw and cleaned series of sampled voxels")
    raw_stats_file = File(exists=True, desc="raw_stats.npz: raw BOLD mean and std of the mask "
                          "voxels over the retained volumes (seed quality)")
    n_retained = traits.Int()


def carpet_voxels(n_mask):
    """Indices of the carpet-plot voxels: at most :data:`CARPET_VOXELS`, evenly spaced."""
    return np.linspace(0, n_mask - 1, min(CARPET_VOXELS, n_mask)).astype(int)


def denoise_mem_gb(bold_file, mask_file):
    """Peak memory of :class:`Denoise` on ``bold_file``, GB, for Nipype's scheduler.

    One (volumes x mask voxels) float32 array (read, then cleaned in its own memory), 10 % for
    the cleaning's temporaries, and 0.4 GB for the chunk buffers and the interpreter (0.71 GB for
    300 volumes of 235 840 voxels; measured: 0.50 GB peak RSS with one process).
    """
    n_volumes = nb.load(bold_file).shape[-1]
    n_voxels = int(np.count_nonzero(np.asanyarray(nb.load(mask_file).dataobj)))
    return 0.4 + 1.1 * 4 * n_volumes * n_voxels / 1e9


class Denoise(SimpleInterface):
    """Read (once), smooth, mask, regress confounds, band-pass and censor one BOLD run."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        out = Path(runtime.cwd)
        timings = {}
        clock = time.perf_counter()

        def lap(stage):
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round(now - clock, 3)
            clock = now

        fd = inputs.fd_threshold if isinstance(inputs.fd_threshold, float) else None
        confounds, sample_mask, names = confound_regressors(inputs.bold_file, inputs.strategy, fd)
        mask = np.asanyarray(nb.load(inputs.mask_file).dataobj) > 0
        lap("confounds")
        raw_moments = RawMoments(sample_mask)
        with reading(inputs.bold_file):
            timeseries = read_masked_bold(inputs.bold_file, mask, inputs.smoothing_fwhm or None,
                                          threads=thread_budget(), raw_moments=raw_moments,
                                          processes=inputs.processes)
        raw_moments.save(out / "raw_stats.npz")
        lap("read_smooth_mask")
        check_timeseries(timeseries, inputs.bold_file)
        n_volumes = timeseries.shape[0]
        voxels = carpet_voxels(timeseries.shape[1])
        raw_carpet = timeseries[:, voxels]
        matrix = cleaning_matrix(n_volumes, confounds, sample_mask, inputs.t_r,
                                 inputs.high_pass, inputs.low_pass)
        cleaned = apply_cleaning(matrix, timeseries)
        del timeseries
        lap("clean")
        np.save(out / "cleaned.npy", cleaned)
        np.savez(out / "carpet.npz", raw=raw_carpet, cleaned=cleaned[:, voxels],
                 retained=np.asarray(sample_mask, dtype=int), voxels=voxels)
        info = {
            "BoldFile": inputs.bold_file,
            "RepetitionTime": inputs.t_r,
            "Volumes": int(n_volumes),
            "RetainedVolumes": int(len(sample_mask)),
            "RetainedTime_s": float(len(sample_mask) * inputs.t_r),
            "Regressors": names,
            "DegreesOfFreedom": degrees_of_freedom(len(sample_mask), len(names), inputs.t_r,
                                                   inputs.high_pass, inputs.low_pass),
        }
        (out / "denoise.json").write_text(json.dumps(info, indent=2))
        lap("write")
        # Stage timings for benchmarks/, kept out of the derivatives (they vary run to run).
        (out / "timings.json").write_text(json.dumps(timings))
        LOGGER.debug("denoise %s: %s", Path(inputs.bold_file).name, timings)
        self._results.update(cleaned_file=str(out / "cleaned.npy"),
                             info_file=str(out / "denoise.json"),
                             carpet_file=str(out / "carpet.npz"),
                             raw_stats_file=str(out / "raw_stats.npz"),
                             n_retained=len(sample_mask))
        return runtime
