"""Camera trajectories -> SANA-WM camera inputs, numpy only (run side: never imports torch).

Typical use::

    path = load_c2w_npy("c2w.npy", "intrinsics.npy", image_hw=(720, 1280))   # or action_path / preset_path
    frame, path = prepare_first_frame(image_uint8, path)                         # crop to 704x1280
    path = fit_num_frames(path, 241, stride=24)                                  # streaming: F = 24k + 1
    cond, plucker = prepare_camera(path)             # (T, 20), (48, T, 22, 40) float32
"""

from .actions import ACTION_KEYS, ACTION_STYLES, action_path, action_to_c2w, parse_actions
from .conditioning import (
    MODEL_IMAGE_HW,
    MODEL_LATENT_HW,
    CameraInputs,
    latent_intrinsics,
    plucker_maps,
    prepare_camera,
)
from .crop import CropGeometry, crop_geometry, crop_intrinsics
from .frames import fit_num_frames, num_latent_frames, snap_num_frames, snap_streaming_num_frames
from .image import prepare_first_frame, resize_and_center_crop
from .loaders import load_bench_npz, load_c2w_npy, load_re10k_txt
from .presets import PRESETS, preset_c2w, preset_path
from .trajectory import CameraPath, invert_c2w, normalize_intrinsics, orthonormalize, relative_poses

__all__ = [
    "ACTION_KEYS", "ACTION_STYLES", "CameraInputs", "CameraPath", "CropGeometry", "MODEL_IMAGE_HW",
    "MODEL_LATENT_HW", "PRESETS",
    "action_path", "action_to_c2w", "crop_geometry", "crop_intrinsics", "fit_num_frames", "invert_c2w",
    "latent_intrinsics", "load_bench_npz", "load_c2w_npy", "load_re10k_txt", "normalize_intrinsics",
    "num_latent_frames", "orthonormalize", "parse_actions", "plucker_maps", "prepare_camera",
    "prepare_first_frame", "preset_c2w", "preset_path", "relative_poses", "resize_and_center_crop",
    "snap_num_frames", "snap_streaming_num_frames",
]
