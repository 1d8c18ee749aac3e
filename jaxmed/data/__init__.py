"""Data layer: images, landmark files, the AFIDs data set, synthetic populations, phantoms and the VolumeBank.

Nothing here imports from ``jaxmed.envs`` or ``jaxmed.agents``.
"""

from jaxmed.data.bank import VolumeBank, build_bank
from jaxmed.data.image_io import (
    conform,
    load_image,
    normalise_intensity,
    read_dicom_series,
    read_nifti,
    reorient_to_ras,
    resample_isotropic,
    save_nifti,
)
from jaxmed.data.landmark_files import read_landmarks, write_landmarks
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.phantoms import blob_phantom, organ_phantom
from jaxmed.data.synth import Subject, SynthConfig, make_population, split_seeds, synthesize_subject, write_population
from jaxmed.data.volume import Volume

__all__ = [
    "Landmarks", "Subject", "conform", "SynthConfig", "Volume", "VolumeBank", "blob_phantom", "build_bank", "load_image",
    "make_population", "normalise_intensity", "organ_phantom", "read_dicom_series", "read_landmarks", "read_nifti",
    "reorient_to_ras", "resample_isotropic", "save_nifti", "split_seeds", "synthesize_subject", "write_landmarks",
    "write_population",
]
