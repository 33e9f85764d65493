"""sanawm.camera is run-side code: importing and using it must never import torch."""

import subprocess
import sys
import textwrap


def test_camera_never_imports_torch(tmp_path):
    code = textwrap.dedent(
        """
        import sys

        class NoTorch:  # any attempt to import torch (or diffusers) fails loudly
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers"):
                    raise ImportError("torch import attempted: " + name)
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import sanawm.camera as cam

        path = cam.preset_path("orbit", 30, [500.0, 500.0, 320.0, 240.0], image_hw=(480, 640))
        frame, path = cam.prepare_first_frame(np.zeros((480, 640, 3), np.uint8), path)
        path = cam.fit_num_frames(path, 25, stride=24)
        cond, plucker = cam.prepare_camera(path)
        cam.action_to_c2w("w-3,jd-2")
        assert cond.shape == (4, 20) and plucker.shape == (48, 4, 22, 40)  # 25 frames -> T = 4
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
