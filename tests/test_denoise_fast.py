"""The fast Denoise (chunked read + bounding-box smoothing + cleaning matrix) equals nilearn's route."""

import gzip
import json
import os

import nibabel as nb
import numpy as np
import pytest
from nilearn import masking, signal
from scipy import ndimage

from tmstarget.workflows import confounds
from tmstarget.workflows.confounds import (Denoise, carpet_voxels, cleaning_matrix, confound_regressors,
                                           read_masked_bold, smoothing_passes, smoothing_sigmas)


def _bold(tmp_path, name, shape=(21, 24, 19, 37), slope=None, dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    data = (800 + 60 * rng.normal(size=shape)).astype(dtype)
    affine = np.diag([2.5, 3.0, 2.0, 1.0])  # anisotropic voxels: one sigma per axis
    affine[:3, 3] = [-20, -30, -10]
    img = nb.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 5.0)
    path = tmp_path / name
    img.to_filename(path)
    return path, affine


def _mask(shape, touch_edge):
    mask = np.zeros(shape, dtype=bool)
    if touch_edge:
        mask[:8, 3:20, 10:] = True   # at the image edge on two axes
    else:
        mask[7:13, 9:15, 8:12] = True  # far from every edge
    mask[10, 12, 9] = False
    return mask


@pytest.mark.parametrize("touch_edge", [False, True])
@pytest.mark.parametrize("name,slope", [("bold.nii.gz", None), ("bold.nii", 0.5)])
def test_read_masked_bold_equals_nilearn_apply_mask(tmp_path, touch_edge, name, slope):
    path, affine = _bold(tmp_path, name, slope=slope)
    mask = _mask(nb.load(path).shape[:3], touch_edge)
    mask_img = nb.Nifti1Image(mask.astype(np.uint8), affine)
    for fwhm in (None, 6.0):
        reference = masking.apply_mask(str(path), mask_img, dtype="f", smoothing_fwhm=fwhm)
        # chunks of 5 volumes: the last chunk is partial
        ours = read_masked_bold(path, mask, fwhm, chunk_volumes=5)
        assert ours.shape == reference.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, reference, rtol=2e-6, atol=1e-3)
        # decompressing in a background thread reads the same bytes
        np.testing.assert_array_equal(read_masked_bold(path, mask, fwhm, chunk_volumes=5, threads=2),
                                      ours)
    if slope is None:
        # without smoothing the values are the file's, exactly
        np.testing.assert_array_equal(read_masked_bold(path, mask), np.asanyarray(
            nb.load(path).dataobj)[mask].T)


def _ball_mask(shape, centre, radius):
    """A brain-like (round) mask: most of its bounding box is outside it."""
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


@pytest.mark.parametrize("where", ["inside", "edge", "corner"])
@pytest.mark.parametrize("slope", [None, 0.5])
def test_bounding_box_smoothing_is_byte_identical_to_the_whole_volume(tmp_path, where, slope):
    """Smoothing only the mask's box (and, after each pass, only the mask's extent on the axes
    already smoothed) gives, on the mask voxels, exactly the float32 values of scipy's three
    passes over the whole volume: an independent whole-volume reference, compared bit for bit."""
    shape = (30, 33, 28, 9)
    path, affine = _bold(tmp_path, f"bold_{where}.nii.gz", shape=shape, slope=slope)
    centre, radius = {"inside": ((15, 16, 14), 6.5), "edge": ((3, 16, 14), 7.5),
                      "corner": ((2, 31, 26), 9.0)}[where]
    mask = _ball_mask(shape[:3], centre, radius)
    img = nb.load(path)
    # the reference: the whole 4-D image as the same float32 operations, smoothed whole
    data = np.asanyarray(img.dataobj.get_unscaled())
    volumes = data.astype(np.float32) * np.float32(img.dataobj.slope) if slope else data.astype(np.float32)
    if slope:
        volumes += np.float32(img.dataobj.inter)
    sigmas = smoothing_sigmas(affine, 6.0)
    assert len(set(np.round(sigmas, 6))) == 3  # one sigma per axis: the axes cannot be swapped
    for axis in (0, 1, 2):  # x, y, z: nilearn's order
        ndimage.gaussian_filter1d(volumes, sigmas[axis], axis=axis, output=volumes)
    reference = volumes[mask].T
    for chunk in (1, 4):
        ours = read_masked_bold(path, mask, 6.0, chunk_volumes=chunk)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, reference)
    # cut along x among processes, each over its slab grown by the kernel radius: the same bits,
    # also when the shared ring of decompressed chunks is refilled (9 chunks of 1 volume)
    for processes, chunk in ((2, 4), (3, 4), (2, 1), (3, 1)):
        assert chunk > 1 or shape[3] > confounds.RING_CHUNKS  # the ring goes round
        assert np.array_equal(read_masked_bold(path, mask, 6.0, chunk_volumes=chunk,
                                               processes=processes), reference)


def test_processes_share_the_read_and_give_the_same_moments(tmp_path):
    """Slabs of x read by 3 processes: the smoothed values and the raw BOLD's sums of the seed
    quality are those of one process, bit for bit (random data: a slab not grown by the kernel
    radius, or a column written by the wrong process, would change them)."""
    from tmstarget.workflows.seed_quality import RawMoments

    path, _ = _bold(tmp_path, "bold.nii.gz", shape=(30, 33, 28, 11), slope=0.5)
    mask = _ball_mask((30, 33, 28), (14, 16, 14), 11.0)
    results = {}
    for processes in (1, 3):
        moments = RawMoments(np.arange(2, 11))
        values = read_masked_bold(path, mask, 6.0, chunk_volumes=3, raw_moments=moments,
                                  processes=processes)
        results[processes] = values, *moments.mean_std()
    for one, three in zip(results[1], results[3]):
        assert np.array_equal(one, three)
    slabs = confounds._x_slabs(np.concatenate([[0], np.cumsum(mask.sum(axis=(1, 2)))]), 3)
    assert len(slabs) == 3 and slabs[0][0] == 0 and slabs[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(slabs, slabs[1:]))  # the slabs tile x


def _chunk_sums(chunks):
    return [(start, float(raw.astype(np.float64).sum())) for start, raw in chunks]


def test_the_shared_read_gives_every_reader_the_stream_chunks(tmp_path):
    """Decompressed once into the ring, each chunk reaches every reader as the stream gives it,
    in order, the ring refilled many times (11 chunks through 4 places)."""
    path, _ = _bold(tmp_path, "bold.nii.gz", shape=(12, 10, 8, 11), slope=0.5)
    proxy = nb.load(path).dataobj
    expected = _chunk_sums(confounds._stream_chunks(path, proxy, 1, 1))
    assert len(expected) > 2 * confounds.RING_CHUNKS
    shared = confounds._shared_read_parts(path, proxy, 1, 1, [_chunk_sums] * 3)
    assert shared == [expected] * 3


def test_a_reader_killed_mid_read_is_an_error_not_a_hang(tmp_path):
    """A slab's process killed (the kernel's OOM killer sends SIGKILL): the writer and the other
    readers stop at the end of its pipes, and the read fails with its exit code."""
    import signal as posix_signal  # not nilearn's signal, imported above

    path, _ = _bold(tmp_path, "bold.nii.gz", shape=(12, 10, 8, 11))
    proxy = nb.load(path).dataobj

    def killed_after_two(chunks):
        for k, _ in enumerate(chunks):
            if k == 2:
                os.kill(os.getpid(), posix_signal.SIGKILL)

    previous = posix_signal.signal(posix_signal.SIGALRM, lambda *_: pytest.fail("the shared read hung"))
    posix_signal.alarm(60)
    try:
        with pytest.raises(RuntimeError, match=r"died \(exit code -9\)"):
            confounds._shared_read_parts(path, proxy, 1, 1, [_chunk_sums, killed_after_two, _chunk_sums])
    finally:
        posix_signal.alarm(0)
        posix_signal.signal(posix_signal.SIGALRM, previous)


def test_a_nan_in_one_slab_is_the_error_of_the_read(tmp_path):
    """NaN brain voxels in the last slab: the forked process of that slab fails, and its error,
    naming the file, is the read's, as with one process."""
    rng = np.random.default_rng(5)
    data = (500 + 40 * rng.standard_normal((30, 12, 10, 9))).astype(np.float32)
    mask = np.zeros(data.shape[:3], dtype=bool)
    mask[2:28, 2:10, 2:8] = True
    data[25, 5, 5, 4] = np.nan  # in the brain, high x: the third slab's
    path = tmp_path / "nan_bold.nii.gz"
    nb.Nifti1Image(data, np.eye(4)).to_filename(path)
    for processes in (1, 3):
        with pytest.raises(ValueError, match="nan_bold.nii.gz has NaN or infinite values"):
            read_masked_bold(path, mask, 6.0, chunk_volumes=2, processes=processes)


def test_smoothing_passes_skip_only_what_no_later_pass_reads():
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:5, 3:9, 4:6] = True
    passes = smoothing_passes(mask, (1.0, 2.0, 3.0))
    assert [(axis, sigma) for axis, sigma, _ in passes] == [(3, 3.0), (2, 2.0), (1, 1.0)]
    full = slice(None)
    assert passes[0][2] == (full, full, full, full)
    assert passes[1][2] == (full, full, full, slice(4, 6))
    assert passes[2][2] == (full, full, slice(3, 9), slice(4, 6))
    # a zero sigma is no pass, and the later passes still read only the mask's extent
    assert [axis for axis, _, _ in smoothing_passes(mask, (1.0, 0.0, 3.0))] == [3, 1]


def test_read_masked_bold_refuses_truncated_file_and_wrong_mask(tmp_path):
    path, _ = _bold(tmp_path, "bold.nii.gz")
    mask = _mask(nb.load(path).shape[:3], False)
    whole = gzip.decompress(path.read_bytes())
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(gzip.compress(whole[: len(whole) // 2]))
    for processes in (1, 2):  # with 2, the first process's error is raised, the other stopped
        with pytest.raises(ValueError, match="cut.nii.gz is truncated"):
            read_masked_bold(truncated, mask, 6.0, processes=processes)
    with pytest.raises(ValueError, match="grid of its brain mask"):
        read_masked_bold(path, mask[:-1])


def test_cleaning_matrix_is_nilearn_clean_of_the_identity_and_linear():
    rng = np.random.default_rng(4)
    n = 120
    data = rng.normal(size=(n, 30)).cumsum(axis=0) + 500
    confounds = rng.normal(size=(n, 5))
    keep = np.setdiff1d(np.arange(3, n), [40, 41, 42, 43, 44, 90])  # interior censoring
    matrix = cleaning_matrix(n, confounds, keep, 2.0)
    assert matrix.shape == (len(keep), n)
    reference = signal.clean(data.copy(), detrend=True, standardize=None, confounds=confounds,
                             standardize_confounds=True, sample_mask=keep, filter="butterworth",
                             high_pass=0.01, low_pass=0.1, t_r=2.0)
    np.testing.assert_allclose(matrix @ data, reference, atol=1e-8 * np.abs(data).max())
    # detrending annihilates a constant baseline
    np.testing.assert_allclose(matrix.sum(axis=1), 0, atol=1e-9)


@pytest.mark.parametrize("detrend", [True, False])
def test_cleaning_by_blocks_of_voxels_is_one_product_in_the_series_memory(monkeypatch, detrend):
    """Cleaning block by block gives one whole product's values, in the series' own memory.

    To float32 rounding, not to the bit: on some CPUs OpenBLAS rounds part of a product's
    columns differently depending on the product's width (its Haswell kernels: 88 to 112 of
    each block's 1000 columns here, by up to 5.4e-6). A block placed on the wrong columns, or a
    block left out, is off by the order of the values (z-scores: 6.6 for a block shifted by
    one voxel).
    """
    rng = np.random.default_rng(5)
    n, n_voxels = 150, 5003  # not a multiple of the block
    keep = np.setdiff1d(np.arange(2, n), [60, 61, 62, 100])  # interior censoring: fewer rows out
    matrix = cleaning_matrix(n, rng.normal(size=(n, 4)), keep, 2.0)
    if not detrend:  # a matrix that keeps a constant baseline: its response is added back
        matrix = matrix + 0.01
    series = (800 + 40 * rng.normal(size=(n, n_voxels)).cumsum(axis=0)).astype(np.float32)

    monkeypatch.setattr(confounds, "CLEANING_BLOCK_VALUES", len(keep) * n_voxels)  # one product
    whole = confounds.apply_cleaning(matrix, series.copy())
    monkeypatch.setattr(confounds, "CLEANING_BLOCK_VALUES", len(keep) * 1000)  # 1000 voxels
    overwritten = series.copy()
    blocked = confounds.apply_cleaning(matrix, overwritten)

    assert blocked.shape == (len(keep), n_voxels) and blocked.flags.c_contiguous
    assert np.shares_memory(blocked, overwritten)  # no second (volumes x voxels) array
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=5e-5)
    np.testing.assert_allclose(blocked.std(axis=0, ddof=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="C-contiguous"):
        confounds.apply_cleaning(matrix, np.asfortranarray(series))


def test_denoise_node_equals_the_plain_nilearn_pipeline(one_run_dataset, tmp_path):
    """The node's cleaned array is nilearn's apply_mask + signal.clean, and the carpet matches it."""
    root, _ = one_run_dataset
    bold = next(root.glob("sub-01/func/*space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"))
    mask_file = next(root.glob("sub-01/func/*space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"))
    node = Denoise(bold_file=str(bold), mask_file=str(mask_file), t_r=2.0, fd_threshold=0.5,
                   smoothing_fwhm=6.0)
    result = node.run(cwd=str(tmp_path))
    cleaned = np.load(result.outputs.cleaned_file)

    confounds, keep, _ = confound_regressors(str(bold), "gsr", 0.5)
    timeseries = masking.apply_mask(str(bold), str(mask_file), dtype="f", smoothing_fwhm=6.0)
    reference = signal.clean(timeseries, detrend=True, standardize="zscore_sample",
                             confounds=confounds, standardize_confounds=True, sample_mask=keep,
                             filter="butterworth", high_pass=0.01, low_pass=0.1, t_r=2.0)
    assert cleaned.dtype == np.float32 and cleaned.shape == reference.shape
    np.testing.assert_allclose(cleaned, reference, atol=2e-4)

    info = json.loads(open(result.outputs.info_file).read())
    assert info["Volumes"] == timeseries.shape[0] and info["RetainedVolumes"] == len(keep)
    carpet = np.load(result.outputs.carpet_file)
    voxels = carpet_voxels(timeseries.shape[1])
    np.testing.assert_array_equal(carpet["voxels"], voxels)
    np.testing.assert_array_equal(carpet["retained"], keep)
    np.testing.assert_allclose(carpet["raw"], timeseries[:, voxels], rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(carpet["cleaned"], cleaned[:, voxels])
    assert carpet["raw"].dtype == np.float32 and carpet["cleaned"].dtype == np.float32
