#!/usr/bin/env python3
"""Writes the test fixtures that no Debian or PyPI package ships as files.

Every file here is made by independent libraries (pydicom, nibabel, numpy)
from real images that PyPI packages ship; iris never writes its own test
data. Run by scripts/setup.sh with the project's virtual environment:

    .venv/bin/python tools/make_test_fixtures.py third_party/fixtures

What it writes into OUT (each value the tests expect is stated here, where
it is made, and hard-coded in the tests):

- mni152_2009.nii.gz: nilearn's ICBM152 2009c symmetric T1 template
  (197x233x189, 1 mm, uint8, sform only), copied unchanged. The demo's query.
- oblique_mr/brain_001.dcm .. brain_020.dcm: a 20-slice oblique axial MR
  series (MR Image Storage, explicit VR little endian, uint16), its pixels
  sampled from that template at the slices' patient positions. Its geometry:
  256x256 pixels of 0.859375 mm; ImageOrientationPatient
  1\\0\\0\\0\\0.990960\\0.134158; the first slice at -110.5\\-78.3063\\-72.7575,
  the last at -110.5\\-96.2063\\59.0425, the ones between rounded to 0.1 mm
  from the first (so steps along the normal range 6.96-7.07 mm, ~1 % uneven);
  SpacingBetweenSlices 2.0 and SliceThickness 5.0, both not the real step.
- mni152_be.nii.gz: the template as big-endian NIfTI-1 uint8.
  mni152_nifti2.nii.gz: the same voxels as little-endian NIfTI-2 float32.
- anatomical_be.nii: nibabel's anatomical.nii (big-endian int16, a real file),
  copied; anatomical_4d.nii.gz: its voxels little-endian with a fourth axis
  of length one and the same sform/qform.
- vectors_5d.nii: a 5-D NIfTI-1 (16x12x8x1x3, float32, intent vector).
- not_nifti.nii: nibabel's tiny.mnc (a MINC-1 file) under a NIfTI name.
- nibabel/: every NIfTI file of nibabel's test data, copied.
"""
import hashlib
import os
import shutil
import sys
import tempfile

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

# Deterministic UIDs under pydicom's root (never random: tests name them).
UID_ROOT = "1.2.826.0.1.3680043.8.498."
SERIES_UID = UID_ROOT + "7770001.1"
STUDY_UID = UID_ROOT + "7770001.2"
FRAME_UID = UID_ROOT + "7770001.3"

FIRST = np.array([-110.5, -78.3063, -72.7575])
LAST = np.array([-110.5, -96.2063, 59.0425])
ROW = np.array([1.0, 0.0, 0.0])
COL = np.array([0.0, 0.990960, 0.134158])
PIXEL = 0.859375
SIZE = 256
SLICES = 20


def template_path():
    import nilearn  # its template ships inside the package

    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def trilinear(volume, ijk):
    """Samples volume (x fastest index first) at fractional indices ijk [N,3]; 0 outside."""
    shape = np.array(volume.shape)
    base = np.floor(ijk).astype(np.int64)
    frac = ijk - base
    out = np.zeros(len(ijk))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                idx = base + np.array([dx, dy, dz])
                w = (np.where(dx, frac[:, 0], 1 - frac[:, 0]) * np.where(dy, frac[:, 1], 1 - frac[:, 1]) *
                     np.where(dz, frac[:, 2], 1 - frac[:, 2]))
                inside = np.all((idx >= 0) & (idx < shape), axis=1)
                vals = np.zeros(len(ijk))
                vals[inside] = volume[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
                out += w * vals
    return out


def slice_positions():
    step = (LAST - FIRST) / (SLICES - 1)
    return [FIRST + np.round(k * step * 10) / 10 for k in range(SLICES)]


def ds_text(values, digits=4):
    return ["%.*f" % (digits, v) for v in values]


def write_series(out_dir, template):
    data = np.asarray(template.dataobj).astype(np.float64)
    to_voxel = np.linalg.inv(template.affine)
    os.makedirs(out_dir, exist_ok=True)
    j, i = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")  # j: row index, i: column index
    for k, position in enumerate(slice_positions()):
        lps = position + (i.reshape(-1, 1) * PIXEL) * ROW + (j.reshape(-1, 1) * PIXEL) * COL
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = (to_voxel[:3, :3] @ ras.T + to_voxel[:3, 3:4]).T
        pixels = np.round(4 * trilinear(data, ijk)).astype(np.uint16).reshape(SIZE, SIZE)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = "%s7770001.4.%d" % (UID_ROOT, k + 1)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = SERIES_UID
        ds.FrameOfReferenceUID = FRAME_UID
        ds.PatientName = "ICBM152^Template"
        ds.PatientID = "ICBM2009"
        ds.StudyDate = "20090101"
        ds.StudyID = "1"
        ds.Modality = "MR"
        ds.SeriesDescription = "T1 AXIAL OBL (ICBM152)"
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ds_text(position)
        ds.ImageOrientationPatient = ds_text(np.concatenate([ROW, COL]), 6)
        ds.PixelSpacing = ["0.859375", "0.859375"]
        ds.SliceThickness = "5.0"
        ds.SpacingBetweenSlices = "2.0"
        ds.SliceLocation = "%.4f" % float(np.dot(position, np.cross(ROW, COL)))
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "0"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = SIZE
        ds.Columns = SIZE
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(os.path.join(out_dir, "brain_%03d.dcm" % (k + 1)), enforce_file_format=True)


def nifti_with_header(data, affine, header_class, endianness, sform_code=2, qform_code=0):
    header = header_class(endianness=endianness)
    header.set_data_dtype(data.dtype)
    image = (nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image)(data, affine, header=header)
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    return image


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_test_fixtures.py OUT_DIR")
    final = os.path.abspath(sys.argv[1])
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".fixtures.", dir=parent)  # renamed into place when complete
    os.chmod(work, 0o755)
    try:
        src = template_path()
        template = nib.load(src)
        shutil.copyfile(src, os.path.join(work, "mni152_2009.nii.gz"))
        write_series(os.path.join(work, "oblique_mr"), template)

        data = np.asarray(template.dataobj)
        nib.save(nifti_with_header(data.astype(np.uint8), template.affine, nib.Nifti1Header, ">"),
                 os.path.join(work, "mni152_be.nii.gz"))
        nib.save(nifti_with_header(data.astype(np.float32), template.affine, nib.Nifti2Header, "<"),
                 os.path.join(work, "mni152_nifti2.nii.gz"))

        nib_data = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
        anatomical = nib.load(os.path.join(nib_data, "anatomical.nii"))
        shutil.copyfile(os.path.join(nib_data, "anatomical.nii"), os.path.join(work, "anatomical_be.nii"))
        a = np.asarray(anatomical.dataobj).astype("<i2")[..., np.newaxis]
        nib.save(nifti_with_header(a, anatomical.affine, nib.Nifti1Header, "<", 2, 2),
                 os.path.join(work, "anatomical_4d.nii.gz"))

        vectors = np.arange(16 * 12 * 8 * 3, dtype=np.float32).reshape(16, 12, 8, 1, 3)
        v = nib.Nifti1Image(vectors, np.diag([2.0, 2.0, 2.0, 1.0]))
        v.header.set_intent("vector")
        nib.save(v, os.path.join(work, "vectors_5d.nii"))

        shutil.copyfile(os.path.join(nib_data, "tiny.mnc"), os.path.join(work, "not_nifti.nii"))
        os.makedirs(os.path.join(work, "nibabel"))
        for name in sorted(os.listdir(nib_data)):
            if name.endswith((".nii", ".nii.gz")):
                shutil.copyfile(os.path.join(nib_data, name), os.path.join(work, "nibabel", name))

        # A digest of everything written, so set-up can tell an outdated copy.
        digest = hashlib.sha256()
        for root, _, files in sorted(os.walk(work)):
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(name.encode() + f.read())
        with open(os.path.join(work, "SHA256"), "w") as f:
            f.write(digest.hexdigest() + "\n")
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print("fixtures in", final)


if __name__ == "__main__":
    main()
